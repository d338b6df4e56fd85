//! Engine tests on a virtual clock with a [`LocalReplicator`] and the real
//! [`StateMachine`]: one test per rule, each citing its section.

use super::*;
use crate::command::StateMachine;
use crate::config::Config;
use crate::replicate::{LocalReplicator, Replicator};
use crate::subscriber::StaticSubscribers;
use haven_proto::mip::ext::{ParsedReply, UdpTunnelRequest, VendorExt, parse_reply};
use haven_proto::mip::registration::Flags;
use hex_literal::hex;

const KEY: [u8; 16] = hex!("00112233445566778899aabbccddeeff");
const NAI_KEY: [u8; 16] = hex!("ffeeddccbbaa99887766554433221100");
const FA_KEY: [u8; 16] = hex!("0f0e0d0c0b0a09080706050403020100");
const INNER: RealmId = RealmId(0);
const OUTER: RealmId = RealmId(1);
const INNER_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OUTER_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
/// Fixed home address with a legacy prefix+suffix association.
const HOA_PS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 6);
const COA: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);
const COA2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 51);
const COA3: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 52);
const NAT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, 7), 40_000);
const FA: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const POOL_SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
/// 2027-01-15: a wall clock as a Duration since the Unix epoch.
const T0: Duration = Duration::from_secs(1_800_000_000);

fn base_config() -> Config {
    Config::from_toml_str(
        r#"
        [[realm]]
        name = "inner"
        vip = "192.0.2.1"
        home_prefix = "198.51.100.0/24"
        [[realm.sa]]
        home_address = "198.51.100.5"
        spi = 256
        key_hex = "00112233445566778899aabbccddeeff"
        [[realm.sa]]
        home_address = "198.51.100.6"
        spi = 257
        algorithm = "prefix-suffix-md5"
        key_hex = "00112233445566778899aabbccddeeff"

        [[realm]]
        name = "outer"
        vip = "203.0.113.1"
        home_prefix = "198.18.0.0/24"
        pool = "198.18.0.10-198.18.0.11"
        [[realm.sa]]
        nai = "mn1@example.net"
        spi = 300
        key_hex = "ffeeddccbbaa99887766554433221100"
        [[realm.sa]]
        nai = "mn2@example.net"
        spi = 300
        key_hex = "ffeeddccbbaa99887766554433221100"
        [[realm.sa]]
        nai = "mn3@example.net"
        spi = 300
        key_hex = "ffeeddccbbaa99887766554433221100"
        "#,
    )
    .expect("test config parses")
}

struct Lab {
    e: Engine,
    r: LocalReplicator,
    now: Duration,
}

impl Lab {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = base_config();
        f(&mut cfg);
        cfg.validate().expect("test config is valid");
        let r = LocalReplicator::new(StateMachine::from_config(&cfg));
        let e = Engine::new(
            EngineConfig::from_config(&cfg),
            &cfg.realm,
            Arc::new(StaticSubscribers::from_config(&cfg)),
            r.reader(),
        );
        Lab { e, r, now: T0 }
    }

    fn table(&self) -> Arc<BindingTable> {
        self.r.reader()
    }

    /// Proposals → replicator → applied → engine; returns how many.
    fn pump(&mut self) -> usize {
        let mut n = 0;
        while let Some((id, cmd)) = self.e.poll_proposal() {
            n += 1;
            self.r.propose(id, cmd).expect("local never refuses");
            while let Some(a) = self.r.poll_applied() {
                self.e.handle_applied(self.now, &a);
            }
        }
        n
    }

    /// Delivers a datagram to `vip:434` from `src`, pumps, returns the
    /// replies.
    fn deliver(&mut self, src: SocketAddrV4, vip: Ipv4Addr, bytes: &[u8]) -> Vec<Transmit> {
        self.e
            .handle(self.now, src, SocketAddrV4::new(vip, 434), bytes);
        self.pump();
        std::iter::from_fn(|| self.e.poll_transmit()).collect()
    }

    /// Delivers and expects exactly one reply.
    fn one(&mut self, src: SocketAddrV4, vip: Ipv4Addr, bytes: &[u8]) -> Transmit {
        let mut t = self.deliver(src, vip, bytes);
        assert_eq!(t.len(), 1, "exactly one reply: {t:?}");
        t.remove(0)
    }

    fn inner(&mut self, bytes: &[u8]) -> Transmit {
        self.one(from_coa(), INNER_VIP, bytes)
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.e.poll_event()).collect()
    }

    /// The engine's next timer, on the state machine's expiry schedule.
    fn poll_timeout(&self) -> Option<Duration> {
        self.e.poll_timeout(self.r.state().expiry_schedule())
    }

    /// Fires the engine's timers at `now`.
    fn timeout(&mut self, now: Duration) {
        self.e.handle_timeout(now, self.r.state().expiry_schedule());
    }

    fn tick(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }
}

fn from_coa() -> SocketAddrV4 {
    SocketAddrV4::new(COA, 434)
}

fn flags(f: u8) -> Flags {
    Flags::from_bits(f)
}

fn req(
    now: Duration,
    hoa: Ipv4Addr,
    ha: Ipv4Addr,
    coa: Ipv4Addr,
    lifetime: u16,
    f: u8,
) -> RequestRepr {
    RequestRepr {
        flags: flags(f),
        lifetime,
        home_address: hoa,
        home_agent: ha,
        care_of_address: coa,
        identification: Identification::from_unix(now),
    }
}

fn inner_req(lab: &Lab, lifetime: u16, f: u8) -> RequestRepr {
    req(lab.now, HOA, INNER_VIP, COA, lifetime, f)
}

fn signed_with(
    repr: &RequestRepr,
    exts: &[Extension<'_>],
    spi: u32,
    alg: Algorithm,
    key: &[u8],
) -> Vec<u8> {
    let mut b = MessageBuilder::request(repr);
    for e in exts {
        b.push(e).expect("test extension emits");
    }
    b.sign(AuthKind::MnHa, spi, alg, key);
    b.finish()
}

fn signed(repr: &RequestRepr, exts: &[Extension<'_>]) -> Vec<u8> {
    signed_with(repr, exts, 256, Algorithm::HmacMd5, &KEY)
}

fn nai_signed(repr: &RequestRepr, nai: &str, exts: &[Extension<'_>]) -> Vec<u8> {
    let mut all = vec![Extension::MnNai(nai.as_bytes())];
    all.extend_from_slice(exts);
    signed_with(repr, &all, 300, Algorithm::HmacMd5, &NAI_KEY)
}

/// Appends an MN-HA extension by hand over whatever `bytes` hold (for
/// extensions the builder would refuse).
fn sign_raw(mut bytes: Vec<u8>, spi: u32, key: &[u8]) -> Vec<u8> {
    bytes.extend_from_slice(&[32, 20]);
    bytes.extend_from_slice(&spi.to_be_bytes());
    let mac = auth::compute(Algorithm::HmacMd5, key, &bytes);
    bytes.extend_from_slice(&mac);
    bytes
}

fn parsed(t: &Transmit) -> ParsedReply<'_> {
    parse_reply(&t.payload).expect("the engine emits well-formed replies")
}

fn code(t: &Transmit) -> u8 {
    u8::from(parsed(t).fixed.code)
}

/// Whether the reply carries a valid MN-HA authenticator under `key`.
fn signed_by(t: &Transmit, alg: Algorithm, key: &[u8]) -> bool {
    match auth::find_mn_ha(&t.payload) {
        Ok(Some(at)) => at.verify(alg, key, &t.payload).is_ok(),
        _ => false,
    }
}

fn is_unsigned(t: &Transmit) -> bool {
    parsed(t).mn_ha().is_none()
}

fn udp_reply(t: &Transmit) -> Option<UdpTunnelReply> {
    parsed(t).extensions.iter().find_map(|l| match l.extension {
        Extension::UdpTunnelReply(u) => Some(u),
        _ => None,
    })
}

#[test]
fn accepted_signed_with_granted_lifetime() {
    // Reference: RFC 5944 § 3.8.3.1 (reply to the source, HA field, granted
    // lifetime), § 3.5.2 (MN-HA in the reply), § 5.7.1 (ident echoed).
    let mut lab = Lab::new();
    let r = inner_req(&lab, 600, 0);
    let t = lab.inner(&signed(&r, &[]));
    assert_eq!(t.src, SocketAddrV4::new(INNER_VIP, 434));
    assert_eq!(t.dst, from_coa());
    let p = parsed(&t);
    assert_eq!(u8::from(p.fixed.code), 0);
    assert_eq!(p.fixed.lifetime, 600);
    assert_eq!(p.fixed.home_address, HOA);
    assert_eq!(p.fixed.home_agent, INNER_VIP);
    assert_eq!(p.fixed.identification, r.identification);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    assert!(!signed_by(&t, Algorithm::HmacMd5, &NAI_KEY));
    let b = lab.table().get(INNER, HOA).expect("bound");
    assert_eq!(b.care_of.len(), 1);
    let c = b.care_of[0];
    assert_eq!((c.coa, c.lifetime, c.registered_at), (COA, 600, T0));
    assert_eq!(c.encap, Encap::IpInIp);
    assert!(!c.reverse_tunnel);
    assert_eq!(b.last_identification, r.identification.0);
    assert_eq!(
        lab.events(),
        vec![Event::Replied {
            realm: INNER,
            code: 0,
            latency: Duration::ZERO
        }]
    );
    let s = lab.e.stats();
    assert_eq!(
        (s.received, s.replies, s.accepted, s.proposals, s.in_flight),
        (1, 1, 1, 1, 0)
    );
}

#[test]
fn legacy_prefix_suffix_association() {
    // Reference: RFC 2002 § 3.5.1 keyed MD5, kept per association.
    let mut lab = Lab::new();
    let r = req(lab.now, HOA_PS, INNER_VIP, COA, 60, 0);
    let t = lab.inner(&signed_with(&r, &[], 257, Algorithm::PrefixSuffixMd5, &KEY));
    assert_eq!(code(&t), 0);
    assert!(signed_by(&t, Algorithm::PrefixSuffixMd5, &KEY));
    assert!(!signed_by(&t, Algorithm::HmacMd5, &KEY));
}

#[test]
fn lifetime_clamped_to_realm_maximum() {
    // Reference: RFC 5944 § 3.8.2.3 / § 3.8.3.1: the HA may shorten the
    // lifetime and says so in the reply; 0xffff (infinity) included.
    let mut lab = Lab::with(|c| c.realm[0].max_lifetime_secs = 300);
    let t = lab.inner(&signed(&inner_req(&lab, 0xffff, 0), &[]));
    assert_eq!(code(&t), 0);
    assert_eq!(parsed(&t).fixed.lifetime, 300);
    assert_eq!(
        lab.table().get(INNER, HOA).expect("bound").care_of[0].lifetime,
        300
    );
}

#[test]
fn authentication_failures_131_unsigned_no_command() {
    // Reference: RFC 5944 § 3.8.2.1 (a): no/invalid authorization → 131.
    let mut lab = Lab::new();
    let r = inner_req(&lab, 600, 0);
    let cases: Vec<Vec<u8>> = vec![
        signed_with(&r, &[], 256, Algorithm::HmacMd5, &NAI_KEY), // wrong key
        signed_with(&r, &[], 999, Algorithm::HmacMd5, &KEY),     // unknown SPI
        signed_with(&r, &[], 257, Algorithm::HmacMd5, &KEY),     // another MN's SPI
        MessageBuilder::request(&r).finish(),                    // no MN-HA
        signed_with(&r, &[], 256, Algorithm::PrefixSuffixMd5, &KEY), // wrong algorithm
    ];
    for (i, bytes) in cases.iter().enumerate() {
        lab.tick(1);
        let t = lab.inner(bytes);
        assert_eq!(code(&t), 131, "case {i}");
        assert!(is_unsigned(&t), "case {i}: nothing to sign with");
        assert_eq!(parsed(&t).fixed.identification, r.identification);
    }
    assert_eq!(lab.e.stats().proposals, 0);
    assert_eq!(lab.e.stats().unsigned_replies, cases.len() as u64);
    assert!(lab.table().is_empty());
    // An MN with no association at all.
    let other = req(
        lab.now,
        Ipv4Addr::new(198, 51, 100, 77),
        INNER_VIP,
        COA,
        600,
        0,
    );
    assert_eq!(code(&lab.inner(&signed(&other, &[]))), 131);
}

#[test]
fn unauthenticated_denials_may_be_dropped() {
    // Policy switch: unsigned denials become silent drops.
    let mut lab = Lab::new();
    lab.e.set_reply_unauthenticated(false);
    let r = inner_req(&lab, 600, 0);
    let bytes = signed_with(&r, &[], 256, Algorithm::HmacMd5, &NAI_KEY);
    assert!(lab.deliver(from_coa(), INNER_VIP, &bytes).is_empty());
    assert_eq!(
        lab.events(),
        vec![Event::Dropped {
            realm: Some(INNER),
            reason: DropReason::Unauthenticated
        }]
    );
}

#[test]
fn every_single_bit_flip_is_refused() {
    // Reference: RFC 5944 § 3.5.1: the authenticator covers the whole
    // message up to the SPI; no tampered request may change state.
    let mut lab = Lab::new();
    let good = signed(
        &inner_req(&lab, 600, 0x02),
        &[Extension::Nvse(VendorExt {
            vendor_id: 32473,
            vendor_type: 9,
            data: b"x",
        })],
    );
    for bit in 0..good.len() * 8 {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        lab.e
            .handle(lab.now, from_coa(), SocketAddrV4::new(INNER_VIP, 434), &b);
        assert!(
            lab.e.poll_proposal().is_none(),
            "bit {bit} produced a command"
        );
        while let Some(t) = lab.e.poll_transmit() {
            assert!(!parsed(&t).fixed.code.is_accepted(), "bit {bit} accepted");
        }
    }
    assert!(lab.table().is_empty());
    assert_eq!(
        code(&lab.inner(&good)),
        0,
        "the untampered request still works"
    );
}

#[test]
fn foreign_agent_authentication_132() {
    // Reference: RFC 5944 § 3.8.2.1 (c): with an FA-HA association, a
    // missing or invalid FA-HA extension → 132.
    let mut lab = Lab::new();
    lab.e.add_foreign_agent(
        INNER,
        FA,
        Arc::new(SecurityAssociation {
            spi: 4000,
            algorithm: Algorithm::HmacMd5,
            key: crate::config::Key::new(FA_KEY.to_vec()),
        }),
    );
    let via_fa = SocketAddrV4::new(FA, 434);
    let with_fa = |lab: &Lab, spi: u32, key: &[u8]| {
        let mut b = MessageBuilder::request(&inner_req(lab, 600, 0));
        b.sign(AuthKind::MnHa, 256, Algorithm::HmacMd5, &KEY);
        b.sign(AuthKind::FaHa, spi, Algorithm::HmacMd5, key);
        b.finish()
    };
    let t = lab.one(via_fa, INNER_VIP, &signed(&inner_req(&lab, 600, 0), &[]));
    assert_eq!(code(&t), 132, "missing FA-HA");
    assert!(
        signed_by(&t, Algorithm::HmacMd5, &KEY),
        "the MN was authenticated"
    );
    lab.tick(1);
    let t = lab.one(via_fa, INNER_VIP, &with_fa(&lab, 4000, &KEY));
    assert_eq!(code(&t), 132, "wrong FA key");
    lab.tick(1);
    let t = lab.one(via_fa, INNER_VIP, &with_fa(&lab, 4001, &FA_KEY));
    assert_eq!(code(&t), 132, "wrong FA SPI");
    assert!(lab.table().is_empty());
    lab.tick(1);
    let t = lab.one(via_fa, INNER_VIP, &with_fa(&lab, 4000, &FA_KEY));
    assert_eq!(code(&t), 0, "valid FA-HA");
    // The same MN directly (no FA association with its address): no FA-HA needed.
    lab.tick(1);
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
}

#[test]
fn wrong_home_agent_136_carries_the_vip() {
    // Reference: RFC 5944 § 3.8.2.1: unknown home agent address → 136,
    // the reply's Home Agent field set to the HA's address (§ 3.4).
    let mut lab = Lab::new();
    let r = req(lab.now, HOA, Ipv4Addr::new(192, 0, 2, 99), COA, 600, 0);
    let t = lab.inner(&signed(&r, &[]));
    assert_eq!(code(&t), 136);
    assert_eq!(parsed(&t).fixed.home_agent, INNER_VIP);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    assert!(lab.table().is_empty());
}

#[test]
fn timestamp_too_old_too_new_and_replayed_133() {
    // Reference: RFC 5944 § 5.7.1: outside the tolerance (7 s default) or
    // not newer than the last accepted → 133 with the HA's time high and
    // the request's low-order 32 bits.
    let mut lab = Lab::new();
    for skew in [-8i64, 8] {
        let at = if skew < 0 {
            lab.now - Duration::from_secs(8)
        } else {
            lab.now + Duration::from_secs(8)
        };
        let mut r = inner_req(&lab, 600, 0);
        r.identification = Identification(Identification::from_unix(at).0 | 0x1234);
        let t = lab.inner(&signed(&r, &[]));
        assert_eq!(code(&t), 133, "skew {skew}");
        assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
        let id = parsed(&t).fixed.identification;
        assert_eq!(id.low(), r.identification.low());
        assert_eq!(id.high(), Identification::from_unix(lab.now).high());
    }
    // Within tolerance (7 s late) is fine.
    let mut r = inner_req(&lab, 600, 0);
    r.identification = Identification::from_unix(lab.now - Duration::from_secs(7));
    assert_eq!(code(&lab.inner(&signed(&r, &[]))), 0);
    // Another one, 3 s late but newer: accepted.
    lab.tick(1);
    let mut r = inner_req(&lab, 600, 0);
    r.identification = Identification::from_unix(lab.now - Duration::from_secs(3));
    let accepted = r;
    assert_eq!(code(&lab.inner(&signed(&r, &[]))), 0);
    // The same request again, and an older one, both within tolerance:
    // refused as replays only.
    let t = lab.inner(&signed(&accepted, &[]));
    assert_eq!(code(&t), 133);
    assert_eq!(
        parsed(&t).fixed.identification.low(),
        accepted.identification.low()
    );
    let mut older = accepted;
    older.identification = Identification(accepted.identification.0 - 1);
    assert_eq!(code(&lab.inner(&signed(&older, &[]))), 133);
    assert_eq!(lab.e.stats().proposals, 2);
    // A fresh one is accepted.
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
}

#[test]
fn nonce_derivation_vector() {
    // Computed with python3: hmac.new(key, b"haven-nonce-v1" + realm(2) +
    // b"\x00" + hoa(4) + last(8), hashlib.md5).digest()[:4], and the NAI
    // form with b"\x01" + nai.
    assert_eq!(
        derive_nonce(&KEY, INNER, &Identity::HomeAddress(HOA), 0),
        0x4d51_ed56
    );
    let nai = Identity::Nai(Nai::new("mn1@example.net").expect("nai"));
    assert_eq!(
        derive_nonce(&NAI_KEY, OUTER, &nai, 0x0102_0304_0506_0708),
        0x6833_2726
    );
}

#[test]
fn nonce_mode_flow() {
    // Reference: RFC 5944 § 5.7.2: a wrong HA nonce → 133 carrying the
    // nonce to use; accepted replies carry the next one; the MN's nonce is
    // echoed in the low 32 bits.
    let mut lab = Lab::with(|c| c.registration.replay = ReplayMode::Nonce);
    let mut r = inner_req(&lab, 600, 0);
    r.identification = Identification::from_nonces(0xdead_beef, 0x0000_0001);
    let t = lab.inner(&signed(&r, &[]));
    assert_eq!(code(&t), 133);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    let n1 = parsed(&t).fixed.identification;
    assert_eq!(
        n1.ha_nonce(),
        derive_nonce(&KEY, INNER, &Identity::HomeAddress(HOA), 0)
    );
    assert_eq!(n1.mn_nonce(), 1);
    // Timestamps are irrelevant in nonce mode.
    r.identification = Identification::from_nonces(n1.ha_nonce(), 0x0000_0002);
    let t = lab.inner(&signed(&r, &[]));
    assert_eq!(code(&t), 0);
    let n2 = parsed(&t).fixed.identification;
    assert_eq!(n2.mn_nonce(), 2);
    assert_eq!(
        n2.ha_nonce(),
        derive_nonce(&KEY, INNER, &Identity::HomeAddress(HOA), r.identification.0)
    );
    assert_ne!(n2.ha_nonce(), n1.ha_nonce());
    // A replay of the accepted request: its nonce is used up.
    let t = lab.inner(&signed(&r, &[]));
    assert_eq!(code(&t), 133);
    assert_eq!(parsed(&t).fixed.identification.ha_nonce(), n2.ha_nonce());
    r.identification = Identification::from_nonces(n2.ha_nonce(), 3);
    assert_eq!(code(&lab.inner(&signed(&r, &[]))), 0);
}

#[test]
fn unknown_non_skippable_extension_134() {
    // Reference: RFC 5944 § 1.9: an unknown extension 0–127 → 134.
    let mut lab = Lab::new();
    let unknown = Extension::Unknown {
        ty: 100,
        data: &[0, 0],
    };
    // Before the MN-HA: the MN cannot be authenticated, the 134 is unsigned.
    let t = lab.inner(&signed(&inner_req(&lab, 600, 0), &[unknown]));
    assert_eq!(code(&t), 134);
    assert!(is_unsigned(&t));
    // After the MN-HA: the MN is authenticated, the 134 is signed.
    let mut b = MessageBuilder::request(&inner_req(&lab, 600, 0));
    b.sign(AuthKind::MnHa, 256, Algorithm::HmacMd5, &KEY);
    b.push(&unknown).expect("emits");
    let t = lab.inner(&b.finish());
    assert_eq!(code(&t), 134);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    // A skippable unknown (200) is ignored.
    let skip = Extension::Unknown {
        ty: 200,
        data: &[1],
    };
    assert_eq!(
        code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[skip]))),
        0
    );
    assert_eq!(lab.e.stats().proposals, 1);
}

#[test]
fn poorly_formed_framing_and_order_134() {
    // Reference: RFC 5944 § 3.6.1.3 (FA-HA after MN-HA), § 1.9 (framing).
    let mut lab = Lab::new();
    let r = inner_req(&lab, 600, 0);
    // FA-HA before the MN-HA.
    let mut b = MessageBuilder::request(&r);
    b.sign(AuthKind::FaHa, 4000, Algorithm::HmacMd5, &FA_KEY);
    let bytes = sign_raw(b.finish(), 256, &KEY);
    assert_eq!(code(&lab.inner(&bytes)), 134);
    // An extension whose length runs past the end.
    let mut bytes = signed(&r, &[]);
    bytes.extend_from_slice(&[134, 40, 0]);
    let t = lab.inner(&bytes);
    assert_eq!(code(&t), 134);
    assert!(
        signed_by(&t, Algorithm::HmacMd5, &KEY),
        "MN-HA found before the bad one"
    );
    assert_eq!(lab.e.stats().proposals, 0);
}

#[test]
fn critical_vendor_extension_140_normal_skipped() {
    // Reference: RFC 3115 § 5: an unknown CVSE from the MN → 140; an
    // unknown NVSE is ignored (§ 4).
    let mut lab = Lab::new();
    let cvse = Extension::Cvse(VendorExt {
        vendor_id: 32473,
        vendor_type: 1,
        data: b"route",
    });
    let t = lab.inner(&signed(&inner_req(&lab, 600, 0), &[cvse]));
    assert_eq!(code(&t), 140);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    let nvse = Extension::Nvse(VendorExt {
        vendor_id: 9,
        vendor_type: 7,
        data: b"ignored",
    });
    assert_eq!(
        code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[nvse]))),
        0
    );
}

#[test]
fn reverse_tunnel_policy_137_138() {
    // Reference: RFC 3024 § 4.2.3: T requested but unavailable → 137; reverse
    // tunnel mandatory and T unset → 138.
    let mut lab = Lab::with(|c| c.realm[0].reverse_tunnel = ReverseTunnelPolicy::Forbidden);
    assert_eq!(
        code(&lab.inner(&signed(&inner_req(&lab, 600, Flags::T), &[]))),
        137
    );
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
    let mut lab = Lab::with(|c| c.realm[0].reverse_tunnel = ReverseTunnelPolicy::Required);
    assert_eq!(
        code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))),
        138
    );
    lab.tick(1);
    assert_eq!(
        code(&lab.inner(&signed(&inner_req(&lab, 600, Flags::T), &[]))),
        0
    );
    assert!(lab.table().get(INNER, HOA).expect("bound").care_of[0].reverse_tunnel);
}

#[test]
fn minimal_or_gre_encapsulation_139() {
    // Reference: RFC 3024 § 4.3 / RFC 5944 § 3.8.2.1: requested
    // encapsulation unavailable → 139 (haven tunnels IP in IP only).
    let mut lab = Lab::new();
    assert_eq!(
        code(&lab.inner(&signed(&inner_req(&lab, 600, Flags::M), &[]))),
        139
    );
    assert_eq!(
        code(&lab.inner(&signed(&inner_req(&lab, 600, Flags::G), &[]))),
        139
    );
    assert!(lab.table().is_empty());
}

fn udp_req(force: bool, encapsulation: Encapsulation) -> Extension<'static> {
    Extension::UdpTunnelRequest(UdpTunnelRequest {
        force,
        registration_via_fa: false,
        encapsulation,
    })
}

#[test]
fn udp_tunnel_unavailable_142() {
    // Reference: RFC 3519 § 3.4: UDP tunnelling declined → 142, also for an
    // encapsulation other than IP in IP.
    let mut lab = Lab::with(|c| c.realm[0].udp_tunnel = false);
    let r = inner_req(&lab, 600, 0);
    let t = lab.one(
        NAT,
        INNER_VIP,
        &signed(&r, &[udp_req(false, Encapsulation::IpInIp)]),
    );
    assert_eq!(code(&t), 142);
    assert_eq!(t.dst, NAT, "replies go to the NAT mapping");
    let mut lab = Lab::new();
    let t = lab.one(
        NAT,
        INNER_VIP,
        &signed(&r, &[udp_req(false, Encapsulation::Gre)]),
    );
    assert_eq!(code(&t), 142);
    assert!(lab.table().is_empty());
}

#[test]
fn udp_tunnel_negotiated_records_nat_mapping() {
    // Reference: RFC 3519 § 3.1–3.2: NAT detected (source ≠ CoA) → UDP
    // Tunnel Reply with the keepalive interval; data goes to the mapping.
    let mut lab = Lab::with(|c| c.realm[0].keepalive_interval_secs = 25);
    let r = inner_req(&lab, 600, 0);
    let t = lab.one(
        NAT,
        INNER_VIP,
        &signed(&r, &[udp_req(false, Encapsulation::IpInIp)]),
    );
    assert_eq!(code(&t), 0);
    assert_eq!(t.dst, NAT);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    let u = udp_reply(&t).expect("UDP Tunnel Reply");
    assert_eq!(u.code, TunnelReplyCode::Accepted);
    assert_eq!(u.keepalive_interval, 25);
    assert!(!u.force);
    let c = lab.table().get(INNER, HOA).expect("bound").care_of[0];
    assert_eq!(c.encap, Encap::Udp { nat: NAT });
    assert_eq!(c.coa, COA);
    // No NAT and no F: plain IP in IP, no UDP Tunnel Reply.
    lab.tick(1);
    let r = inner_req(&lab, 600, 0);
    let t = lab.inner(&signed(&r, &[udp_req(false, Encapsulation::IpInIp)]));
    assert_eq!(code(&t), 0);
    assert!(udp_reply(&t).is_none());
    assert_eq!(
        lab.table().get(INNER, HOA).expect("bound").care_of[0].encap,
        Encap::IpInIp
    );
    // F forces it without a NAT.
    lab.tick(1);
    let r = inner_req(&lab, 600, 0);
    let t = lab.inner(&signed(&r, &[udp_req(true, Encapsulation::IpInIp)]));
    assert!(udp_reply(&t).expect("forced").force);
    assert_eq!(
        lab.table().get(INNER, HOA).expect("bound").care_of[0].encap,
        Encap::Udp { nat: from_coa() }
    );
    // A NAT but no request: the MN did not ask, IP in IP.
    lab.tick(1);
    let r = inner_req(&lab, 600, 0);
    let t = lab.one(NAT, INNER_VIP, &signed(&r, &[]));
    assert_eq!(code(&t), 0);
    assert!(udp_reply(&t).is_none());
    assert_eq!(
        lab.table().get(INNER, HOA).expect("bound").care_of[0].encap,
        Encap::IpInIp
    );
}

fn outer_req(lab: &Lab, hoa: Ipv4Addr, lifetime: u16) -> RequestRepr {
    req(lab.now, hoa, OUTER_VIP, COA, lifetime, 0)
}

#[test]
fn nai_dynamic_allocation_is_idempotent_and_pool_exhausts_130() {
    // Reference: RFC 2794 § 2 (HoA 0.0.0.0 + MN-NAI asks for an address),
    // RFC 5944 § 3.4 code 130 (insufficient resources).
    let mut lab = Lab::new();
    let any = Ipv4Addr::UNSPECIFIED;
    let t = lab.one(
        from_coa(),
        OUTER_VIP,
        &nai_signed(&outer_req(&lab, any, 600), "mn1@example.net", &[]),
    );
    assert_eq!(code(&t), 0);
    assert_eq!(parsed(&t).fixed.home_address, POOL_FIRST);
    assert!(signed_by(&t, Algorithm::HmacMd5, &NAI_KEY));
    let b = lab.table().get(OUTER, POOL_FIRST).expect("bound");
    assert_eq!(b.nai.as_deref(), Some("mn1@example.net"));
    // Again with 0.0.0.0, then with the address: the same address.
    lab.tick(1);
    let t = lab.one(
        from_coa(),
        OUTER_VIP,
        &nai_signed(&outer_req(&lab, any, 600), "mn1@example.net", &[]),
    );
    assert_eq!(parsed(&t).fixed.home_address, POOL_FIRST);
    lab.tick(1);
    let t = lab.one(
        from_coa(),
        OUTER_VIP,
        &nai_signed(&outer_req(&lab, POOL_FIRST, 600), "mn1@example.net", &[]),
    );
    assert_eq!(code(&t), 0);
    assert_eq!(parsed(&t).fixed.home_address, POOL_FIRST);
    assert_eq!(lab.table().len(), 1);
    let t = lab.one(
        from_coa(),
        OUTER_VIP,
        &nai_signed(&outer_req(&lab, any, 600), "mn2@example.net", &[]),
    );
    assert_eq!(parsed(&t).fixed.home_address, POOL_SECOND);
    let t = lab.one(
        from_coa(),
        OUTER_VIP,
        &nai_signed(&outer_req(&lab, any, 600), "mn3@example.net", &[]),
    );
    assert_eq!(code(&t), 130);
    assert!(signed_by(&t, Algorithm::HmacMd5, &NAI_KEY));
    assert_eq!(lab.table().len(), 2);
}

#[test]
fn nai_home_address_rules_134_129() {
    // Reference: RFC 2794 § 2: HoA 0.0.0.0 needs an MN-NAI (else 134, and
    // unsigned: no association can be found). An MN known by its NAI may
    // only ask for a pool address (RFC 5944 § 3.4 code 129).
    let mut lab = Lab::new();
    let any = Ipv4Addr::UNSPECIFIED;
    let r = outer_req(&lab, any, 600);
    let t = lab.one(
        from_coa(),
        OUTER_VIP,
        &signed_with(&r, &[], 300, Algorithm::HmacMd5, &NAI_KEY),
    );
    assert_eq!(code(&t), 134);
    assert!(is_unsigned(&t));
    let fixed = Ipv4Addr::new(198, 18, 0, 5);
    let t = lab.one(
        from_coa(),
        OUTER_VIP,
        &nai_signed(&outer_req(&lab, fixed, 600), "mn1@example.net", &[]),
    );
    assert_eq!(code(&t), 129);
    assert!(signed_by(&t, Algorithm::HmacMd5, &NAI_KEY));
    // Inner realm has no pool: dynamic allocation impossible there.
    let mut lab = Lab::with(|c| {
        c.realm[0].sa.push(crate::config::SaConfig {
            home_address: None,
            nai: Some("mn9@example.net".into()),
            spi: 300,
            algorithm: crate::config::AlgorithmName::HmacMd5,
            key_hex: crate::config::Key::new(NAI_KEY.to_vec()),
        })
    });
    let r = req(lab.now, any, INNER_VIP, COA, 600, 0);
    assert_eq!(
        code(&lab.inner(&nai_signed(&r, "mn9@example.net", &[]))),
        129
    );
    assert!(lab.table().is_empty());
}

#[test]
fn simultaneous_bindings_code_1_keep_and_135() {
    // Reference: RFC 5944 § 3.4 (code 1: S set but unsupported), § 3.6.1.2
    // (S keeps other care-of addresses), code 135 beyond the limit.
    let mut lab = Lab::new();
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
    lab.tick(1);
    let r = req(lab.now, HOA, INNER_VIP, COA2, 600, Flags::S);
    assert_eq!(code(&lab.inner(&signed(&r, &[]))), 1);
    let b = lab.table().get(INNER, HOA).expect("bound");
    assert_eq!(b.care_of.len(), 1, "replaced");
    assert_eq!(b.care_of[0].coa, COA2);

    let mut lab = Lab::with(|c| c.realm[0].simultaneous_bindings = 2);
    for (i, coa) in [COA, COA2].into_iter().enumerate() {
        lab.tick(1);
        let r = req(lab.now, HOA, INNER_VIP, coa, 600, Flags::S);
        assert_eq!(code(&lab.inner(&signed(&r, &[]))), 0, "binding {i}");
    }
    assert_eq!(lab.table().get(INNER, HOA).expect("bound").care_of.len(), 2);
    lab.tick(1);
    let r = req(lab.now, HOA, INNER_VIP, COA3, 600, Flags::S);
    let t = lab.inner(&signed(&r, &[]));
    assert_eq!(code(&t), 135);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    // Without S a registration replaces them all.
    lab.tick(1);
    let r = req(lab.now, HOA, INNER_VIP, COA3, 600, 0);
    assert_eq!(code(&lab.inner(&signed(&r, &[]))), 0);
    assert_eq!(lab.table().get(INNER, HOA).expect("bound").care_of.len(), 1);
}

#[test]
fn deregistration_lifetime_zero_and_coa_equals_hoa() {
    // Reference: RFC 5944 § 3.6.1.2 / § 3.8.2: lifetime 0 removes that
    // care-of address; CoA = HoA (the MN is home) removes all.
    let mut lab = Lab::with(|c| c.realm[0].simultaneous_bindings = 3);
    for coa in [COA, COA2, COA3] {
        lab.tick(1);
        let r = req(lab.now, HOA, INNER_VIP, coa, 600, Flags::S);
        assert_eq!(code(&lab.inner(&signed(&r, &[]))), 0);
    }
    lab.tick(1);
    let r = req(lab.now, HOA, INNER_VIP, COA2, 0, Flags::S);
    let t = lab.inner(&signed(&r, &[]));
    assert_eq!(code(&t), 0);
    assert_eq!(parsed(&t).fixed.lifetime, 0);
    assert!(signed_by(&t, Algorithm::HmacMd5, &KEY));
    let b = lab.table().get(INNER, HOA).expect("two left");
    assert!(b.care_of.find(COA2).is_none());
    assert_eq!(b.care_of.len(), 2);
    lab.tick(1);
    let r = req(lab.now, HOA, INNER_VIP, HOA, 600, 0);
    assert_eq!(code(&lab.inner(&signed(&r, &[]))), 0);
    assert!(lab.table().is_empty());
    assert_eq!(lab.poll_timeout(), None, "nothing left to expire");
}

#[test]
fn replay_after_deregistration_still_refused() {
    // Reference: RFC 5944 § 5.7: the last accepted identification survives
    // the binding (replay memory), so a replayed request is 133.
    let mut lab = Lab::new();
    let reg = signed(&inner_req(&lab, 600, 0), &[]);
    assert_eq!(code(&lab.inner(&reg)), 0);
    lab.tick(1);
    let dereg = signed(&inner_req(&lab, 0, 0), &[]);
    assert_eq!(code(&lab.inner(&dereg)), 0);
    assert!(lab.table().is_empty());
    lab.tick(1);
    assert_eq!(code(&lab.inner(&reg)), 133, "old registration replayed");
    assert_eq!(code(&lab.inner(&dereg)), 133, "deregistration replayed");
    assert!(lab.table().is_empty());
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
}

#[test]
fn expiry_via_handle_timeout() {
    // Reference: RFC 5944 § 3.8.2: a binding is deleted when its lifetime
    // runs out.
    let mut lab = Lab::new();
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 60, 0), &[]))), 0);
    lab.events();
    assert_eq!(lab.poll_timeout(), Some(T0 + Duration::from_secs(60)));
    lab.now = T0 + Duration::from_secs(59);
    lab.timeout(lab.now);
    assert!(lab.e.poll_proposal().is_none(), "not yet");
    // A node told not to propose expiries (a follower) stays quiet.
    lab.e.set_propose_expiries(false);
    assert_eq!(lab.poll_timeout(), None);
    lab.timeout(T0 + Duration::from_secs(60));
    assert!(lab.e.poll_proposal().is_none());
    lab.e.set_propose_expiries(true);
    lab.now = T0 + Duration::from_secs(60);
    lab.timeout(lab.now);
    let (id, cmd) = lab.e.poll_proposal().expect("expire proposed");
    assert_eq!(
        cmd,
        Command::Expire {
            realm: INNER,
            home_address: HOA,
            coa: COA,
            expires_at: T0 + Duration::from_secs(60)
        }
    );
    lab.timeout(lab.now);
    assert!(lab.e.poll_proposal().is_none(), "not again while in flight");
    assert_eq!(
        lab.poll_timeout(),
        Some(lab.now + Duration::from_secs(2)),
        "only the retry timer"
    );
    lab.r.propose(id, cmd).expect("local");
    let a = lab.r.poll_applied().expect("applied");
    lab.e.handle_applied(lab.now, &a);
    assert_eq!(
        lab.events(),
        vec![Event::Expired {
            realm: INNER,
            home_address: HOA
        }]
    );
    assert!(lab.table().is_empty());
    assert_eq!(lab.poll_timeout(), None);
    assert_eq!(lab.e.stats().expiries_proposed, 1);
}

#[test]
fn refreshed_binding_is_not_expired() {
    // A re-registration moves the expiry: the old one is never proposed.
    let mut lab = Lab::new();
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 60, 0), &[]))), 0);
    lab.tick(30);
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 60, 0), &[]))), 0);
    assert_eq!(lab.poll_timeout(), Some(T0 + Duration::from_secs(90)));
    lab.now = T0 + Duration::from_secs(60);
    lab.timeout(lab.now);
    assert!(lab.e.poll_proposal().is_none());
}

#[test]
fn expiries_of_a_state_the_engine_never_saw_applied() {
    // A node that starts, or installs a snapshot (raft) or a dump (pair),
    // with bindings present: no `Applied` entry for them ever reaches the
    // engine, which reads the state machine's schedule directly.
    let mut lab = Lab::new();
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 60, 0), &[]))), 0);
    let cfg = base_config();
    let mut fresh = Engine::new(
        EngineConfig::from_config(&cfg),
        &cfg.realm,
        Arc::new(StaticSubscribers::from_config(&cfg)),
        lab.table(),
    );
    let schedule = lab.r.state().expiry_schedule();
    assert_eq!(
        fresh.poll_timeout(schedule),
        Some(T0 + Duration::from_secs(60))
    );
    fresh.handle_timeout(T0 + Duration::from_secs(61), schedule);
    assert!(matches!(
        fresh.poll_proposal(),
        Some((_, Command::Expire { .. }))
    ));
    // A snapshot installed on another node: its engine reads the restored
    // schedule, with nothing to resynchronise.
    let snap = lab.r.state().snapshot();
    let mut restored = StateMachine::from_config(&cfg);
    restored.restore(&snap).expect("restores");
    let mut other = Engine::new(
        EngineConfig::from_config(&cfg),
        &cfg.realm,
        Arc::new(StaticSubscribers::from_config(&cfg)),
        restored.reader(),
    );
    assert_eq!(
        other.poll_timeout(restored.expiry_schedule()),
        Some(T0 + Duration::from_secs(60))
    );
    other.handle_timeout(T0 + Duration::from_secs(59), restored.expiry_schedule());
    assert!(other.poll_proposal().is_none(), "not yet");
    other.handle_timeout(T0 + Duration::from_secs(60), restored.expiry_schedule());
    assert!(matches!(
        other.poll_proposal(),
        Some((_, Command::Expire { .. }))
    ));
}

#[test]
fn second_request_in_flight_is_busy() {
    // One request per MN in flight: the MN retransmits [RFC 5944 § 3.6.3].
    let mut lab = Lab::new();
    let dst = SocketAddrV4::new(INNER_VIP, 434);
    lab.e.handle(
        lab.now,
        from_coa(),
        dst,
        &signed(&inner_req(&lab, 600, 0), &[]),
    );
    lab.tick(1);
    lab.e.handle(
        lab.now,
        from_coa(),
        dst,
        &signed(&inner_req(&lab, 600, 0), &[]),
    );
    assert_eq!(
        lab.events(),
        vec![Event::Dropped {
            realm: Some(INNER),
            reason: DropReason::Busy
        }]
    );
    assert_eq!(lab.e.stats().in_flight, 1);
    assert_eq!(lab.pump(), 1);
    assert_eq!(code(&lab.e.poll_transmit().expect("first one answered")), 0);
    assert!(lab.e.poll_transmit().is_none());
    // After the apply the MN is free again.
    lab.tick(1);
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
}

#[test]
fn commit_timeout_never_replies_later() {
    // DESIGN.md § 4: no reply without an applied entry; a late one is not
    // answered either.
    let mut lab = Lab::new();
    let dst = SocketAddrV4::new(INNER_VIP, 434);
    lab.e.handle(
        lab.now,
        from_coa(),
        dst,
        &signed(&inner_req(&lab, 600, 0), &[]),
    );
    let (id, cmd) = lab.e.poll_proposal().expect("proposed");
    assert_eq!(lab.poll_timeout(), Some(T0 + Duration::from_secs(2)));
    lab.now = T0 + Duration::from_secs(2);
    lab.timeout(lab.now);
    assert_eq!(
        lab.events(),
        vec![Event::Dropped {
            realm: Some(INNER),
            reason: DropReason::CommitTimeout
        }]
    );
    lab.r.propose(id, cmd).expect("local");
    let a = lab.r.poll_applied().expect("applied");
    lab.e.handle_applied(lab.now, &a);
    assert!(lab.e.poll_transmit().is_none(), "never replied late");
    assert!(
        lab.table().get(INNER, HOA).is_some(),
        "but the state followed the log"
    );
    assert_eq!(lab.poll_timeout(), Some(T0 + Duration::from_secs(600)));

    // An apply that arrives after the deadline but before the timer fired.
    lab.tick(1);
    lab.e.handle(
        lab.now,
        from_coa(),
        dst,
        &signed(&inner_req(&lab, 600, 0), &[]),
    );
    let (id, cmd) = lab.e.poll_proposal().expect("proposed");
    lab.tick(3);
    lab.r.propose(id, cmd).expect("local");
    let a = lab.r.poll_applied().expect("applied");
    lab.e.handle_applied(lab.now, &a);
    assert!(lab.e.poll_transmit().is_none());
    assert_eq!(lab.e.stats().commit_timeouts, 2);
}

#[test]
fn refused_proposal_drops_without_reply() {
    // DESIGN.md § 4: a minority node refuses instead of acknowledging.
    let mut lab = Lab::new();
    let dst = SocketAddrV4::new(INNER_VIP, 434);
    lab.e.handle(
        lab.now,
        from_coa(),
        dst,
        &signed(&inner_req(&lab, 600, 0), &[]),
    );
    let (id, _) = lab.e.poll_proposal().expect("proposed");
    lab.e.proposal_failed(id);
    assert!(lab.e.poll_transmit().is_none());
    assert_eq!(
        lab.events(),
        vec![Event::Dropped {
            realm: Some(INNER),
            reason: DropReason::ReplicationUnavailable
        }]
    );
    assert_eq!(lab.poll_timeout(), None);
    // The MN is not stuck as busy.
    lab.tick(1);
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
}

#[test]
fn lost_proposal_frees_the_mn_at_once_and_is_never_answered_late() {
    // A proposal lost with a dead leader (`Replicator::poll_lost`): the MN
    // is not `Busy` until `max_commit_ms`, its retransmission is proposed
    // at once, and the lost entry, should it still commit, gets no reply
    // (DESIGN.md § 4; the retransmission's newer Identification wins,
    // RFC 5944 § 5.7).
    let mut lab = Lab::new();
    let dst = SocketAddrV4::new(INNER_VIP, 434);
    lab.e.handle(
        lab.now,
        from_coa(),
        dst,
        &signed(&inner_req(&lab, 600, 0), &[]),
    );
    let (lost, lost_cmd) = lab.e.poll_proposal().expect("proposed");
    // The replicator accepted it; then the leader died.
    lab.now += Duration::from_millis(300);
    lab.e.proposal_failed(lost);
    assert_eq!(
        lab.events(),
        vec![Event::Dropped {
            realm: Some(INNER),
            reason: DropReason::ReplicationUnavailable
        }]
    );
    assert_eq!(lab.e.stats().in_flight, 0);
    assert_eq!(lab.poll_timeout(), None, "no commit deadline left");
    // The retransmission 250 ms later, well inside the 2 s commit timeout.
    lab.now += Duration::from_millis(250);
    assert_eq!(
        lab.e.handle(
            lab.now,
            from_coa(),
            dst,
            &signed(&inner_req(&lab, 600, 0), &[])
        ),
        Handled::Proposed
    );
    let (retry, retry_cmd) = lab.e.poll_proposal().expect("proposed again");
    assert_ne!(retry, lost);
    // The lost entry commits after all (the new leader had it): silence.
    lab.r.propose(lost, lost_cmd).expect("local");
    let a = lab.r.poll_applied().expect("applied");
    lab.e.handle_applied(lab.now, &a);
    assert!(
        lab.e.poll_transmit().is_none(),
        "the lost id is never answered"
    );
    assert_eq!(lab.e.stats().in_flight, 1, "the retransmission still waits");
    lab.r.propose(retry, retry_cmd).expect("local");
    let a = lab.r.poll_applied().expect("applied");
    lab.e.handle_applied(lab.now, &a);
    assert_eq!(code(&lab.e.poll_transmit().expect("answered")), 0);
    assert!(lab.e.poll_transmit().is_none());
}

#[test]
fn admin_removal() {
    let mut lab = Lab::new();
    assert_eq!(code(&lab.inner(&signed(&inner_req(&lab, 600, 0), &[]))), 0);
    lab.events();
    let id = lab.e.remove_binding(INNER, HOA);
    let (pid, cmd) = lab.e.poll_proposal().expect("proposed");
    assert_eq!(pid, id);
    assert_eq!(
        cmd,
        Command::AdminRemove {
            realm: INNER,
            home_address: HOA
        }
    );
    lab.r.propose(pid, cmd).expect("local");
    let a = lab.r.poll_applied().expect("applied");
    lab.e.handle_applied(lab.now, &a);
    assert_eq!(
        lab.events(),
        vec![Event::Removed {
            realm: INNER,
            home_address: HOA
        }]
    );
    assert!(lab.table().is_empty());
    assert!(lab.e.poll_transmit().is_none());
    assert_eq!(lab.poll_timeout(), None);
}

#[test]
fn other_nodes_entries_are_followed() {
    // Entries proposed elsewhere (request None) update the expiry mirror and
    // produce events, never replies.
    let mut lab = Lab::new();
    let cmd = Command::Register {
        realm: INNER,
        home_address: HOA,
        nai: None,
        care_of: CareOf {
            coa: COA,
            registered_at: T0,
            lifetime: 10,
            encap: Encap::IpInIp,
            reverse_tunnel: false,
        },
        identification: 1,
        validated_against: None,
        simultaneous: false,
    };
    lab.r.propose(RequestId(999), cmd).expect("local");
    let mut a = lab.r.poll_applied().expect("applied");
    a.request = None;
    lab.e.handle_applied(lab.now, &a);
    assert!(lab.e.poll_transmit().is_none());
    assert_eq!(lab.poll_timeout(), Some(T0 + Duration::from_secs(10)));
}

#[test]
fn unreadable_datagrams_are_dropped_silently() {
    // Nothing to answer: no fixed part, not a request, not our address.
    let mut lab = Lab::new();
    let good = signed(&inner_req(&lab, 600, 0), &[]);
    let dst = SocketAddrV4::new(INNER_VIP, 434);
    let cases: [(&[u8], SocketAddrV4, DropReason); 5] = [
        (&good[..23], dst, DropReason::Malformed),
        (&[], dst, DropReason::Malformed),
        (&[3; 40], dst, DropReason::NotRegistration),
        (
            &good,
            SocketAddrV4::new(INNER_VIP, 435),
            DropReason::UnknownRealm,
        ),
        (
            &good,
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 434),
            DropReason::UnknownRealm,
        ),
    ];
    for (bytes, to, reason) in cases {
        lab.e.handle(lab.now, from_coa(), to, bytes);
        assert!(lab.e.poll_transmit().is_none());
        assert!(lab.e.poll_proposal().is_none());
        let ev = lab.events();
        assert_eq!(ev.len(), 1);
        assert!(
            matches!(&ev[0], Event::Dropped { reason: r, .. } if *r == reason),
            "{ev:?}"
        );
        assert!(!reason.as_str().is_empty());
    }
    assert_eq!(lab.e.stats().dropped, 5);
}

#[test]
fn config_and_names() {
    let cfg = base_config();
    let c = EngineConfig::from_config(&cfg);
    assert_eq!(c.timestamp_tolerance, Duration::from_secs(7));
    assert_eq!(c.commit_timeout, Duration::from_millis(2000));
    assert_eq!(c.replay, ReplayMode::Timestamp);
    let lab = Lab::new();
    assert_eq!(lab.e.realm_by_name("outer"), Some(OUTER));
    assert_eq!(lab.e.realm_by_name("nowhere"), None);
    assert_eq!(DropReason::CommitTimeout.as_str(), "commit_timeout");
}

#[test]
fn nai_of_an_mn_known_by_home_address_is_not_trusted() {
    // Reference: RFC 2794 § 2 / RFC 5944 § 1.6: the association that
    // authenticated the request says who the MN is; an MN-NAI it carries
    // does not make it that NAI's owner.
    let mut lab = Lab::new();
    let r = inner_req(&lab, 600, 0);
    let t = lab.inner(&signed(&r, &[Extension::MnNai(b"mn1@example.net")]));
    assert_eq!(code(&t), 0);
    assert_eq!(lab.table().get(INNER, HOA).expect("bound").nai, None);
    assert_eq!(lab.table().home_address_of(INNER, "mn1@example.net"), None);
}

#[test]
fn handle_says_what_became_of_a_datagram() {
    // The flood limiter charges a source only for `Refused` (server.rs).
    let mut lab = Lab::new();
    let vip = SocketAddrV4::new(INNER_VIP, 434);
    let good = signed(&inner_req(&lab, 600, 0), &[]);
    assert_eq!(
        lab.e.handle(lab.now, from_coa(), vip, &good),
        Handled::Proposed
    );
    // The same request again while its command is being replicated.
    assert_eq!(lab.e.handle(lab.now, from_coa(), vip, &good), Handled::Busy);
    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        lab.e.handle(lab.now, from_coa(), vip, &forged),
        Handled::Refused
    );
    assert_eq!(
        lab.e.handle(lab.now, from_coa(), vip, &[1, 2]),
        Handled::Refused
    );
    assert_eq!(lab.pump(), 1, "only the good request was proposed");
}

/// A second engine on the lab's replicated state: another node of the
/// cluster (each node's engine reads its own replica; here they share one).
fn second_node(lab: &Lab, replay: ReplayMode) -> Engine {
    let mut cfg = base_config();
    cfg.registration.replay = replay;
    cfg.validate().expect("test config is valid");
    Engine::new(
        EngineConfig::from_config(&cfg),
        &cfg.realm,
        Arc::new(StaticSubscribers::from_config(&cfg)),
        lab.r.reader(),
    )
}

/// Commits `cmd` proposed by `owner` (answered there) and shows the entry
/// to `other` as another node's.
fn commit(lab: &mut Lab, owner_is_lab: bool, other: &mut Engine, id: RequestId, cmd: Command) {
    lab.r.propose(id, cmd).expect("local never refuses");
    let a = lab.r.poll_applied().expect("applied");
    let mut foreign = a.clone();
    foreign.request = None;
    if owner_is_lab {
        lab.e.handle_applied(lab.now, &a);
        other.handle_applied(lab.now, &foreign);
    } else {
        other.handle_applied(lab.now, &a);
        lab.e.handle_applied(lab.now, &foreign);
    }
}

#[test]
fn nonce_mode_a_request_overtaken_by_the_retransmission_is_stale_133_with_the_next_nonce() {
    // RFC 5944 § 5.7.2: a request validated on node A before the MN's
    // retransmission through node B was committed must not apply after it
    // (it would put the older care-of address back); A answers 133 with
    // the nonce that follows B's accepted request, so the MN resynchronises.
    let mut lab = Lab::with(|c| c.registration.replay = ReplayMode::Nonce);
    let mut b = second_node(&lab, ReplayMode::Nonce);
    let n0 = derive_nonce(&KEY, INNER, &Identity::HomeAddress(HOA), 0);
    let dst = SocketAddrV4::new(INNER_VIP, 434);
    let mut r1 = inner_req(&lab, 600, 0);
    r1.identification = Identification::from_nonces(n0, 1);
    let mut r2 = req(lab.now, HOA, INNER_VIP, COA2, 600, 0);
    r2.identification = Identification::from_nonces(n0, 2);
    assert_eq!(
        lab.e.handle(lab.now, from_coa(), dst, &signed(&r1, &[])),
        Handled::Proposed
    );
    let from2 = SocketAddrV4::new(COA2, 434);
    assert_eq!(
        b.handle(lab.now, from2, dst, &signed(&r2, &[])),
        Handled::Proposed
    );
    let (id1, p1) = lab.e.poll_proposal().expect("A proposes");
    let (id2, p2) = b.poll_proposal().expect("B proposes");
    for p in [&p1, &p2] {
        assert!(
            matches!(
                p,
                Command::Register {
                    validated_against: None,
                    ..
                }
            ),
            "{p:?}"
        );
    }
    // The log puts B's (the retransmission) first.
    commit(&mut lab, false, &mut b, id2, p2);
    let t2 = b.poll_transmit().expect("B answers");
    assert_eq!(code(&t2), 0);
    commit(&mut lab, true, &mut b, id1, p1);
    let t1 = lab.e.poll_transmit().expect("A answers");
    assert_eq!(code(&t1), 133);
    assert!(signed_by(&t1, Algorithm::HmacMd5, &KEY));
    let id = parsed(&t1).fixed.identification;
    assert_eq!(id.mn_nonce(), 1, "the MN's nonce echoed [RFC 5944 § 5.7.2]");
    let next = derive_nonce(
        &KEY,
        INNER,
        &Identity::HomeAddress(HOA),
        r2.identification.0,
    );
    assert_eq!(id.ha_nonce(), next, "the nonce after B's request");
    assert_eq!(id.ha_nonce(), parsed(&t2).fixed.identification.ha_nonce());
    // Nothing of the stale request was applied.
    let e = lab.table().get(INNER, HOA).expect("bound");
    assert_eq!(e.care_of[0].coa, COA2);
    assert_eq!(e.last_identification, r2.identification.0);
    assert!(lab.e.poll_transmit().is_none() && b.poll_transmit().is_none());
    // The MN, resynchronised, registers through A again.
    let mut r3 = inner_req(&lab, 600, 0);
    r3.identification = Identification::from_nonces(next, 3);
    assert_eq!(code(&lab.inner(&signed(&r3, &[]))), 0);
    assert_eq!(
        lab.table().get(INNER, HOA).expect("bound").care_of[0].coa,
        COA
    );
}

#[test]
fn timestamp_mode_a_stale_apply_is_133_with_the_ha_time() {
    // RFC 5944 § 5.7.1: the 133 of a request overtaken by a newer one
    // carries the HA's time high and the request's low 32 bits.
    let mut lab = Lab::new();
    let mut b = second_node(&lab, ReplayMode::Timestamp);
    let dst = SocketAddrV4::new(INNER_VIP, 434);
    let r1 = inner_req(&lab, 600, 0);
    lab.tick(1);
    let r2 = req(lab.now, HOA, INNER_VIP, COA2, 600, 0);
    lab.e.handle(lab.now, from_coa(), dst, &signed(&r1, &[]));
    b.handle(
        lab.now,
        SocketAddrV4::new(COA2, 434),
        dst,
        &signed(&r2, &[]),
    );
    let (id1, p1) = lab.e.poll_proposal().expect("A proposes");
    let (id2, p2) = b.poll_proposal().expect("B proposes");
    commit(&mut lab, false, &mut b, id2, p2);
    assert_eq!(code(&b.poll_transmit().expect("B answers")), 0);
    // Within the commit timeout, later than the request's timestamp.
    lab.tick(1);
    commit(&mut lab, true, &mut b, id1, p1);
    let t = lab.e.poll_transmit().expect("A answers");
    assert_eq!(code(&t), 133);
    let id = parsed(&t).fixed.identification;
    assert_eq!(
        id,
        ha_identification_for_timestamp_mismatch(lab.now, r1.identification)
    );
    assert_ne!(id.high(), r1.identification.high(), "the HA's time");
    assert_eq!(id.low(), r1.identification.low());
    assert_eq!(
        lab.table().get(INNER, HOA).expect("bound").care_of[0].coa,
        COA2
    );
}

#[test]
fn nai_mn_moving_across_a_lost_proposal_reregisters_through_another_node() {
    // The rack's leader-kill interleaving for an outer mobile node (NAI,
    // dynamic home address [RFC 2794 § 2], UDP tunnelling behind a NAT
    // [RFC 3519 § 3.1], timestamps [RFC 5944 § 5.7.1]): its request from
    // the new care-of address is proposed on node A and lost with the
    // leader; the retransmission (a newer timestamp) goes through node B;
    // the lost entry still commits first (the new leader had it). B must
    // answer 0 with the same home address, the binding must hold the new
    // care-of address and NAT mapping, and neither node may keep the MN
    // busy. Both forms of the request: HoA 0.0.0.0 and the assigned one.
    let nat2 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, 8), 40_001);
    let udp = [udp_req(false, Encapsulation::IpInIp)];
    for asks in [Ipv4Addr::UNSPECIFIED, POOL_FIRST] {
        let mut lab = Lab::new();
        let mut b = second_node(&lab, ReplayMode::Timestamp);
        let dst = SocketAddrV4::new(OUTER_VIP, 434);
        let any = Ipv4Addr::UNSPECIFIED;
        let r0 = outer_req(&lab, any, 600);
        let t = lab.one(NAT, OUTER_VIP, &nai_signed(&r0, "mn1@example.net", &udp));
        assert_eq!(code(&t), 0);
        assert_eq!(parsed(&t).fixed.home_address, POOL_FIRST);
        // The move: a new care-of address behind a new NAT mapping.
        lab.tick(4);
        let r1 = req(lab.now, asks, OUTER_VIP, COA2, 600, 0);
        let bytes = nai_signed(&r1, "mn1@example.net", &udp);
        assert_eq!(lab.e.handle(lab.now, nat2, dst, &bytes), Handled::Proposed);
        let (id1, c1) = lab.e.poll_proposal().expect("A proposes");
        assert!(
            matches!(
                c1,
                Command::Register { validated_against: Some(v), .. }
                    if v == r0.identification.0
            ),
            "{c1:?}"
        );
        // Lost with the leader (`Replicator::poll_lost`).
        lab.now += Duration::from_millis(300);
        lab.e.proposal_failed(id1);
        // The retransmission, through B once the dispatcher moved the flow.
        lab.now += Duration::from_millis(700);
        let r2 = req(lab.now, asks, OUTER_VIP, COA2, 600, 0);
        let bytes = nai_signed(&r2, "mn1@example.net", &udp);
        assert_eq!(b.handle(lab.now, nat2, dst, &bytes), Handled::Proposed);
        let (id2, c2) = b.poll_proposal().expect("B proposes");
        // The log: the lost entry first, then the retransmission.
        commit(&mut lab, true, &mut b, id1, c1);
        assert!(
            lab.e.poll_transmit().is_none(),
            "the lost id is never answered"
        );
        assert!(b.poll_transmit().is_none());
        commit(&mut lab, false, &mut b, id2, c2);
        let t = b.poll_transmit().expect("B answers the retransmission");
        assert_eq!(code(&t), 0, "asking for {asks}");
        assert_eq!(t.dst, nat2);
        assert_eq!(parsed(&t).fixed.home_address, POOL_FIRST);
        assert_eq!(parsed(&t).fixed.identification, r2.identification);
        assert!(udp_reply(&t).is_some());
        let e = lab.table().get(OUTER, POOL_FIRST).expect("bound");
        assert_eq!(e.care_of[0].coa, COA2);
        assert_eq!(e.care_of[0].encap, Encap::Udp { nat: nat2 });
        assert_eq!(e.last_identification, r2.identification.0);
        assert_eq!(lab.table().len(), 1, "no second address allocated");
        assert_eq!(lab.e.stats().in_flight, 0);
        assert_eq!(b.stats().in_flight, 0);
        // Nobody keeps the MN busy: its next request is proposed on A.
        lab.tick(1);
        let r3 = req(lab.now, asks, OUTER_VIP, COA2, 600, 0);
        let t = lab.one(nat2, OUTER_VIP, &nai_signed(&r3, "mn1@example.net", &udp));
        assert_eq!(code(&t), 0);
    }
}
