//! # The mobile-node registration client core (sans-IO)
//!
//! One mobile node's side of Mobile IPv4 registration [RFC 5944 § 3.6], in
//! the shape of `quinn-proto`: no sockets, no clocks. The driver (the
//! simulator in [`crate::mnsim`], or a test) feeds datagrams with
//! [`MobileNode::handle`], fires timers with [`MobileNode::handle_timeout`],
//! and drains [`MobileNode::poll_transmit`] and [`MobileNode::poll_event`];
//! `now` is always a parameter (time since the Unix epoch), so the unit tests
//! below run on a virtual clock.
//!
//! What the core does:
//! * builds Registration Requests with the extensions in the order of
//!   [RFC 5944 § 3.6.1.3]: MN-NAI [RFC 2794 § 2] and the UDP Tunnel Request
//!   [RFC 3519 § 3.1] before the MN-HA authentication extension, which
//!   covers everything before it [RFC 5944 § 3.5.1];
//! * identification by NTP timestamp [RFC 5944 § 5.7.1] (strictly increasing,
//!   corrected by an offset learnt from a code 133 reply) or by nonces
//!   [RFC 5944 § 5.7.2];
//! * accepts a reply only when its identification's low 32 bits match a
//!   request of the current registration and its MN-HA authenticator is
//!   valid; anything else is silently discarded [RFC 5944 § 3.6.2.1];
//! * retransmits with exponential backoff [RFC 5944 § 3.6.3] and gives up
//!   after a configured number of tries;
//! * re-registers at 80 % of the granted lifetime, deregisters with lifetime
//!   0, and re-registers at once after a move.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use haven_proto::mip::auth::{self, Algorithm};
use haven_proto::mip::ext::{
    AuthKind, Encapsulation, Extension, ExtensionType, MessageBuilder, TunnelReplyCode,
    UdpTunnelRequest, parse_reply,
};
use haven_proto::mip::ident::Identification;
use haven_proto::mip::registration::{Flags, RequestRepr};
use haven_proto::mip::{PORT, ReplyCode};

/// How the Identification field protects against replay [RFC 5944 § 5.7].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayMode {
    /// NTP timestamps [RFC 5944 § 5.7.1] (the default, and haven's).
    #[default]
    Timestamp,
    /// Nonces: high 32 bits from the home agent, low 32 bits ours
    /// [RFC 5944 § 5.7.2].
    Nonce,
}

/// One mobile node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnConfig {
    /// Home address; `0.0.0.0` with [`nai`](Self::nai) set asks the home
    /// agent to allocate one [RFC 2794 § 2].
    pub home_address: Ipv4Addr,
    /// The mobile node's NAI (MN-NAI extension 131), if any.
    pub nai: Option<Vec<u8>>,
    /// The home agent address (the cluster's VIP).
    pub home_agent: Ipv4Addr,
    /// The home agent's UDP port (434 [RFC 5944 § 3.1]).
    pub home_agent_port: u16,
    /// The care-of address put in the request.
    pub care_of_address: Ipv4Addr,
    /// D flag: the care-of address is co-located (we decapsulate).
    pub colocated: bool,
    /// Security Parameter Index of the MN-HA security association.
    pub spi: u32,
    /// Authenticator algorithm (HMAC-MD5 by default [RFC 5944 § 3.5.1]).
    pub algorithm: Algorithm,
    /// The MN-HA key.
    pub key: Vec<u8>,
    /// Requested lifetime in seconds (0 is reserved for deregistration).
    pub lifetime: u16,
    /// T flag: reverse tunnelling [RFC 3024].
    pub reverse_tunnel: bool,
    /// S flag: simultaneous bindings.
    pub simultaneous: bool,
    /// Send a UDP Tunnel Request (encapsulation 4) [RFC 3519 § 3.1].
    pub udp_tunnel: bool,
    /// The request's F bit: force UDP tunnelling without a NAT.
    pub force_udp_tunnel: bool,
    /// Timestamp or nonce identification.
    pub replay: ReplayMode,
    /// First retransmission timeout; RFC 5944 § 3.6.3 says at least 1 s.
    pub initial_timeout: Duration,
    /// Cap of the doubling timeout (it never exceeds the requested lifetime
    /// either [RFC 5944 § 3.6.3]).
    pub max_timeout: Duration,
    /// Transmissions of one request before [`Event::GaveUp`].
    pub max_attempts: u32,
    /// Seed of the mobile node's nonces (nonce mode only).
    pub nonce_seed: u64,
}

impl MnConfig {
    /// A configuration with the defaults: HMAC-MD5, lifetime 300 s,
    /// timestamps, co-located care-of address, retransmissions at 1, 2, 4,
    /// 8 s (cap 32 s), 5 tries.
    pub fn new(
        home_address: Ipv4Addr,
        home_agent: Ipv4Addr,
        care_of_address: Ipv4Addr,
        spi: u32,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        MnConfig {
            home_address,
            nai: None,
            home_agent,
            home_agent_port: PORT,
            care_of_address,
            colocated: true,
            spi,
            algorithm: Algorithm::HmacMd5,
            key: key.into(),
            lifetime: 300,
            reverse_tunnel: false,
            simultaneous: false,
            udp_tunnel: false,
            force_udp_tunnel: false,
            replay: ReplayMode::Timestamp,
            initial_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(32),
            max_attempts: 5,
            nonce_seed: 0x6861_7665_6e00_0001,
        }
    }

    fn flags(&self) -> Flags {
        let mut f = Flags::default();
        f.set_decapsulation_by_mn(self.colocated);
        f.set_reverse_tunnel(self.reverse_tunnel);
        f.set_simultaneous_bindings(self.simultaneous);
        f
    }
}

/// What the client reports to its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request left (attempt 1 is the first transmission).
    Sent {
        /// 1-based transmission count of this registration.
        attempt: u32,
        /// The identification sent.
        identification: Identification,
        /// Requested lifetime (0: deregistration).
        lifetime: u16,
    },
    /// The home agent accepted a registration (not a deregistration).
    Accepted {
        /// 0 or 1.
        code: ReplyCode,
        /// Granted lifetime in seconds.
        lifetime: u16,
        /// The home address (the allocated one when we asked for one).
        home_address: Ipv4Addr,
        /// From the first transmission of this registration to the reply.
        latency: Duration,
        /// The keepalive interval when UDP tunnelling was accepted
        /// [RFC 3519 § 3.2].
        udp_tunnel: Option<Duration>,
    },
    /// The home agent refused (any code but 0, 1, or a 133 we recovered from).
    Denied {
        /// The reply code.
        code: ReplyCode,
    },
    /// No valid reply after [`MnConfig::max_attempts`] transmissions.
    GaveUp,
    /// A deregistration (lifetime 0) was accepted.
    Deregistered,
}

/// Why [`MobileNode::handle`] dropped a datagram (silently, as far as the
/// wire is concerned [RFC 5944 § 3.6.2.1]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    /// Not a well-formed Registration Reply.
    #[error("not a well-formed registration reply")]
    Malformed,
    /// No registration is waiting for a reply.
    #[error("no registration outstanding")]
    NotWaiting,
    /// The identification matches no outstanding request.
    #[error("identification does not match the outstanding request")]
    WrongIdentification,
    /// No MN-HA authentication extension, or another SPI.
    #[error("no MN-HA authentication extension for our SPI")]
    NoAuthenticator,
    /// The MN-HA authenticator does not verify.
    #[error("MN-HA authenticator does not verify")]
    BadAuthenticator,
}

/// Where the client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing outstanding, not registered.
    Idle,
    /// A (de)registration request is outstanding.
    Registering,
    /// Registered until the binding's expiry.
    Registered,
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator for
/// nonces and the simulator's jitter; not cryptographic.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with this seed.
    pub const fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One transmission of the current registration.
#[derive(Debug, Clone, Copy)]
struct SentRequest {
    identification: Identification,
    at: Duration,
}

/// The registration in flight.
#[derive(Debug, Clone)]
struct Transaction {
    lifetime: u16,
    /// Every request sent for this registration (a late reply to an earlier
    /// transmission still acknowledges a binding).
    sent: Vec<SentRequest>,
    /// The bytes last sent (nonce mode retransmits them unchanged).
    bytes: Vec<u8>,
    first_sent: Duration,
    timeout: Duration,
    deadline: Duration,
    /// A 133 was already recovered from once in this registration.
    resynced: bool,
}

/// A registered binding, as the mobile node believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Home address of the binding.
    pub home_address: Ipv4Addr,
    /// Care-of address registered.
    pub care_of_address: Ipv4Addr,
    /// Granted lifetime in seconds.
    pub lifetime: u16,
    /// When the binding expires (time since the Unix epoch).
    pub expires: Duration,
    /// When we re-register (80 % of the lifetime).
    pub reregister: Duration,
    /// The keepalive interval of a UDP tunnel, if negotiated.
    pub udp_tunnel: Option<Duration>,
}

/// A mobile node's registration client.
#[derive(Debug, Clone)]
pub struct MobileNode {
    cfg: MnConfig,
    /// The home address in use (learnt from the reply when allocated).
    home_address: Ipv4Addr,
    /// Added to `now` to make timestamps, in nanoseconds, learnt from a
    /// code 133 reply [RFC 5944 § 5.7.1].
    clock_offset_ns: i128,
    last_ident: Identification,
    /// The home agent's last nonce (nonce mode) [RFC 5944 § 5.7.2].
    ha_nonce: u32,
    rng: SplitMix64,
    tx: Option<Transaction>,
    binding: Option<Binding>,
    transmits: VecDeque<(SocketAddrV4, Vec<u8>)>,
    events: VecDeque<Event>,
}

/// Fraction of the granted lifetime after which we re-register.
const REREGISTER_NUM: u32 = 4;
const REREGISTER_DEN: u32 = 5;

impl MobileNode {
    /// A client for `cfg`; nothing is sent until [`register`](Self::register).
    pub fn new(cfg: MnConfig) -> Self {
        MobileNode {
            home_address: cfg.home_address,
            clock_offset_ns: 0,
            last_ident: Identification(0),
            ha_nonce: 0,
            rng: SplitMix64::new(cfg.nonce_seed),
            tx: None,
            binding: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MnConfig {
        &self.cfg
    }

    /// The home address in use (`0.0.0.0` until one is allocated).
    pub fn home_address(&self) -> Ipv4Addr {
        self.home_address
    }

    /// The current care-of address.
    pub fn care_of_address(&self) -> Ipv4Addr {
        self.cfg.care_of_address
    }

    /// The binding we hold, if registered.
    pub fn binding(&self) -> Option<&Binding> {
        self.binding.as_ref()
    }

    /// Where the client stands.
    pub fn state(&self) -> State {
        match (&self.tx, &self.binding) {
            (Some(_), _) => State::Registering,
            (None, Some(_)) => State::Registered,
            (None, None) => State::Idle,
        }
    }

    /// Starts a registration now (replacing any outstanding one).
    pub fn register(&mut self, now: Duration) {
        let lifetime = self.cfg.lifetime;
        self.start(now, lifetime);
    }

    /// Starts a deregistration (lifetime 0) now [RFC 5944 § 3.6.1.2].
    pub fn deregister(&mut self, now: Duration) {
        self.start(now, 0);
    }

    /// The care-of address changed: re-register from it at once.
    pub fn move_to(&mut self, now: Duration, care_of_address: Ipv4Addr) {
        self.cfg.care_of_address = care_of_address;
        self.register(now);
    }

    /// The next datagram to send, to the home agent.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddrV4, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match (&self.tx, &self.binding) {
            (Some(t), _) => Some(t.deadline),
            (None, Some(b)) => Some(b.reregister),
            (None, None) => None,
        }
    }

    /// Fires due timers: a retransmission, giving up, or a re-registration.
    pub fn handle_timeout(&mut self, now: Duration) {
        if let Some(t) = &self.tx {
            if now < t.deadline {
                return;
            }
            if t.sent.len() >= self.cfg.max_attempts as usize {
                self.tx = None;
                // [RFC 5944 § 3.6.3]: without a reply we cannot assume the
                // binding; it lapses at its expiry anyway.
                if self.binding.is_some_and(|b| now >= b.expires) {
                    self.binding = None;
                }
                self.events.push_back(Event::GaveUp);
            } else {
                self.retransmit(now);
            }
            return;
        }
        if let Some(b) = self.binding {
            if now >= b.reregister {
                self.register(now);
            }
        }
    }

    /// Handles a datagram from the home agent.
    ///
    /// # Errors
    /// Why it was dropped; the wire sees nothing [RFC 5944 § 3.6.2.1].
    pub fn handle(
        &mut self,
        now: Duration,
        from: SocketAddrV4,
        bytes: &[u8],
    ) -> Result<(), Discard> {
        // The source is not checked: behind a dispatcher any node answers
        // from the VIP, and the authenticator is what proves the sender.
        let _ = from;
        let reply = parse_reply(bytes).map_err(|_| Discard::Malformed)?;
        let tx = self.tx.as_ref().ok_or(Discard::NotWaiting)?;
        let ident = reply.fixed.identification;
        // [RFC 5944 § 3.6.2.1]: match the low-order 32 bits.
        // An exact match first: two timestamps a whole number of seconds
        // apart share their low half.
        let matched = tx
            .sent
            .iter()
            .rev()
            .find(|s| s.identification == ident)
            .or_else(|| {
                tx.sent
                    .iter()
                    .rev()
                    .find(|s| s.identification.low() == ident.low())
            })
            .copied()
            .ok_or(Discard::WrongIdentification)?;
        let mn_ha = reply.mn_ha().ok_or(Discard::NoAuthenticator)?;
        if mn_ha.spi != self.cfg.spi {
            return Err(Discard::NoAuthenticator);
        }
        let at = auth::find_mn_ha(bytes)
            .ok()
            .flatten()
            .ok_or(Discard::NoAuthenticator)?;
        at.verify(self.cfg.algorithm, &self.cfg.key, bytes)
            .map_err(|_| Discard::BadAuthenticator)?;

        let code = reply.fixed.code;
        if self.cfg.replay == ReplayMode::Nonce {
            // [RFC 5944 § 5.7.2]: the reply's high half is the home agent's
            // next nonce, whatever the code.
            self.ha_nonce = ident.ha_nonce();
        }
        if code == ReplyCode::IdentificationMismatch {
            self.identification_mismatch(now, ident);
            return Ok(());
        }
        let Some(tx) = self.tx.take() else {
            return Err(Discard::NotWaiting);
        };
        let (lifetime, first_sent) = (tx.lifetime, tx.first_sent);
        if !code.is_accepted() {
            self.events.push_back(Event::Denied { code });
            return Ok(());
        }
        if lifetime == 0 {
            self.binding = None;
            self.events.push_back(Event::Deregistered);
            return Ok(());
        }
        if self.cfg.home_address.is_unspecified() {
            // [RFC 2794 § 2]: the allocated home address is in the reply.
            self.home_address = reply.fixed.home_address;
        }
        let udp_tunnel = match reply.covered(ExtensionType::UdpTunnelReply) {
            Some(Extension::UdpTunnelReply(r)) if r.code == TunnelReplyCode::Accepted => {
                Some(Duration::from_secs(u64::from(r.keepalive_interval)))
            }
            _ => None,
        };
        let granted = reply.fixed.lifetime;
        let life = Duration::from_secs(u64::from(granted));
        // [RFC 5944 § 3.6.2.2]: the lifetime runs from when the accepted
        // request was sent.
        let base = matched.at;
        self.binding = Some(Binding {
            home_address: self.home_address,
            care_of_address: self.cfg.care_of_address,
            lifetime: granted,
            expires: base + life,
            reregister: base + life * REREGISTER_NUM / REREGISTER_DEN,
            udp_tunnel,
        });
        self.events.push_back(Event::Accepted {
            code,
            lifetime: granted,
            home_address: self.home_address,
            latency: now.saturating_sub(first_sent),
            udp_tunnel,
        });
        Ok(())
    }

    /// A valid code 133: resynchronise (timestamps) or adopt the home
    /// agent's nonce, and try once more [RFC 5944 § 5.7].
    fn identification_mismatch(&mut self, now: Duration, ha_ident: Identification) {
        let Some(t) = self.tx.as_mut() else { return };
        if t.resynced {
            self.tx = None;
            self.events.push_back(Event::Denied {
                code: ReplyCode::IdentificationMismatch,
            });
            return;
        }
        t.resynced = true;
        if self.cfg.replay == ReplayMode::Timestamp {
            // [RFC 5944 § 5.7.1]: the high 32 bits carry the home agent's
            // time in seconds; half a second centres its truncation.
            let ha_time = Identification::from_parts(ha_ident.high(), 0).to_unix()
                + Duration::from_millis(500);
            self.clock_offset_ns = ha_time.as_nanos() as i128 - now.as_nanos() as i128;
        }
        self.send_new(now);
    }

    fn start(&mut self, now: Duration, lifetime: u16) {
        let timeout = self.cfg.initial_timeout;
        self.tx = Some(Transaction {
            lifetime,
            sent: Vec::new(),
            bytes: Vec::new(),
            first_sent: now,
            timeout,
            deadline: now,
            resynced: false,
        });
        self.send_new(now);
    }

    /// A fresh identification: timestamp (strictly increasing) or nonces.
    fn next_identification(&mut self, now: Duration) -> Identification {
        let id = match self.cfg.replay {
            ReplayMode::Timestamp => {
                let t = (now.as_nanos() as i128 + self.clock_offset_ns).max(0);
                let t = u64::try_from(t).unwrap_or(u64::MAX);
                let id = Identification::from_unix(Duration::from_nanos(t));
                if id <= self.last_ident {
                    Identification(self.last_ident.0.wrapping_add(1))
                } else {
                    id
                }
            }
            ReplayMode::Nonce => {
                Identification::from_nonces(self.ha_nonce, self.rng.next_u64() as u32)
            }
        };
        self.last_ident = id;
        id
    }

    fn build(&self, lifetime: u16, identification: Identification) -> Vec<u8> {
        let repr = RequestRepr {
            flags: self.cfg.flags(),
            lifetime,
            home_address: self.cfg.home_address,
            home_agent: self.cfg.home_agent,
            care_of_address: self.cfg.care_of_address,
            identification,
        };
        let mut b = MessageBuilder::request(&repr);
        // [RFC 5944 § 3.6.1.3], [RFC 2794 § 2]: the NAI and the UDP tunnel
        // request come before the MN-HA extension that covers them. An NAI
        // longer than 255 bytes cannot be framed and is left out.
        if let Some(nai) = self.cfg.nai.as_deref().filter(|n| !n.is_empty()) {
            let _ = b.push(&Extension::MnNai(nai));
        }
        if self.cfg.udp_tunnel {
            let _ = b.push(&Extension::UdpTunnelRequest(UdpTunnelRequest {
                force: self.cfg.force_udp_tunnel,
                registration_via_fa: false,
                encapsulation: Encapsulation::IpInIp,
            }));
        }
        b.sign(
            AuthKind::MnHa,
            self.cfg.spi,
            self.cfg.algorithm,
            &self.cfg.key,
        );
        b.finish()
    }

    /// Sends the current registration with a new identification.
    fn send_new(&mut self, now: Duration) {
        let Some(lifetime) = self.tx.as_ref().map(|t| t.lifetime) else {
            return;
        };
        let id = self.next_identification(now);
        let bytes = self.build(lifetime, id);
        if let Some(t) = self.tx.as_mut() {
            t.bytes = bytes;
        }
        self.transmit(now, id);
    }

    /// [RFC 5944 § 3.6.3]: timestamps make each retransmission a new
    /// registration with a new identification; nonces resend it unchanged.
    fn retransmit(&mut self, now: Duration) {
        let cap = self
            .cfg
            .max_timeout
            .min(Duration::from_secs(u64::from(self.cfg.lifetime.max(1))))
            .max(self.cfg.initial_timeout);
        if let Some(t) = self.tx.as_mut() {
            t.timeout = (t.timeout * 2).min(cap);
        }
        match self.cfg.replay {
            ReplayMode::Timestamp => self.send_new(now),
            ReplayMode::Nonce => {
                if let Some(id) = self.tx.as_ref().and_then(|t| t.sent.last()) {
                    let id = id.identification;
                    self.transmit(now, id);
                }
            }
        }
    }

    fn transmit(&mut self, now: Duration, identification: Identification) {
        let dst = SocketAddrV4::new(self.cfg.home_agent, self.cfg.home_agent_port);
        let Some(t) = self.tx.as_mut() else { return };
        t.sent.push(SentRequest {
            identification,
            at: now,
        });
        t.deadline = now + t.timeout;
        let attempt = t.sent.len() as u32;
        let lifetime = t.lifetime;
        self.transmits.push_back((dst, t.bytes.clone()));
        self.events.push_back(Event::Sent {
            attempt,
            identification,
            lifetime,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_proto::mip::ext::{UdpTunnelReply, parse_request};
    use haven_proto::mip::registration::ReplyRepr;

    const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const HOA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const COA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    const KEY: &[u8] = b"mn-ha shared key";
    const SPI: u32 = 0x100;
    /// 2025-01-01T00:00:00Z.
    const T0: Duration = Duration::from_secs(1_735_689_600);

    fn ha_from() -> SocketAddrV4 {
        SocketAddrV4::new(HA, 434)
    }

    fn cfg() -> MnConfig {
        MnConfig::new(HOA, HA, COA, SPI, KEY)
    }

    fn drain(mn: &mut MobileNode) -> (Vec<Vec<u8>>, Vec<Event>) {
        let tx = std::iter::from_fn(|| mn.poll_transmit()).map(|(d, b)| {
            assert_eq!(d, SocketAddrV4::new(HA, 434));
            b
        });
        let tx = tx.collect();
        (tx, std::iter::from_fn(|| mn.poll_event()).collect())
    }

    /// The reply a home agent would send to `req`, signed with `key`.
    fn reply_to(req: &[u8], code: ReplyCode, lifetime: u16, hoa: Ipv4Addr, key: &[u8]) -> Vec<u8> {
        reply_with(req, code, lifetime, hoa, key, None, true)
    }

    fn reply_with(
        req: &[u8],
        code: ReplyCode,
        lifetime: u16,
        hoa: Ipv4Addr,
        key: &[u8],
        ident: Option<Identification>,
        sign: bool,
    ) -> Vec<u8> {
        let r = parse_request(req).unwrap();
        let repr = ReplyRepr {
            code,
            lifetime,
            home_address: hoa,
            home_agent: r.fixed.home_agent,
            identification: ident.unwrap_or(r.fixed.identification),
        };
        let mut b = MessageBuilder::reply(&repr);
        if r.covered(ExtensionType::UdpTunnelRequest).is_some() {
            b.push(&Extension::UdpTunnelReply(UdpTunnelReply {
                code: TunnelReplyCode::Accepted,
                force: false,
                keepalive_interval: 25,
            }))
            .unwrap();
        }
        if sign {
            b.sign(AuthKind::MnHa, SPI, Algorithm::HmacMd5, key);
        }
        b.finish()
    }

    // Reference: RFC 5944 § 3.6.1.3 (extension order), § 3.5.1 (coverage).
    #[test]
    fn request_is_signed_and_ordered() {
        let mut c = cfg();
        c.home_address = Ipv4Addr::UNSPECIFIED;
        c.nai = Some(b"mn1@example.com".to_vec());
        c.udp_tunnel = true;
        c.force_udp_tunnel = true;
        c.reverse_tunnel = true;
        let mut mn = MobileNode::new(c);
        mn.register(T0);
        let (tx, ev) = drain(&mut mn);
        assert_eq!(tx.len(), 1);
        let p = parse_request(&tx[0]).unwrap();
        assert_eq!(p.fixed.identification, Identification::from_unix(T0));
        assert_eq!(p.fixed.lifetime, 300);
        assert!(p.fixed.flags.reverse_tunnel() && p.fixed.flags.decapsulation_by_mn());
        let tys: Vec<_> = p.extensions.iter().map(|l| l.extension.ty()).collect();
        assert_eq!(
            tys,
            [
                ExtensionType::MnNai,
                ExtensionType::UdpTunnelRequest,
                ExtensionType::MnHaAuth
            ]
        );
        assert!(matches!(
            p.covered(ExtensionType::UdpTunnelRequest),
            Some(Extension::UdpTunnelRequest(UdpTunnelRequest {
                force: true,
                encapsulation: Encapsulation::IpInIp,
                ..
            }))
        ));
        let at = auth::find_mn_ha(&tx[0]).unwrap().unwrap();
        assert_eq!(at.spi, SPI);
        at.verify(Algorithm::HmacMd5, KEY, &tx[0]).unwrap();
        assert!(at.verify(Algorithm::HmacMd5, b"other", &tx[0]).is_err());
        assert!(matches!(ev[..], [Event::Sent { attempt: 1, .. }]));
    }

    // Reference: RFC 5944 § 3.6.3 (1 s start, doubling, cap, give up).
    #[test]
    fn retransmit_schedule_and_give_up() {
        let mut c = cfg();
        c.max_timeout = Duration::from_secs(4);
        c.max_attempts = 5;
        let mut mn = MobileNode::new(c);
        mn.register(T0);
        let mut sends = vec![];
        let mut ids = vec![];
        let mut now = T0;
        let mut gave_up = false;
        loop {
            let (tx, ev) = drain(&mut mn);
            if !tx.is_empty() {
                sends.push(now);
            }
            for e in ev {
                match e {
                    Event::Sent { identification, .. } => ids.push(identification),
                    Event::GaveUp => gave_up = true,
                    e => panic!("unexpected {e:?}"),
                }
            }
            let Some(t) = mn.poll_timeout() else { break };
            // Firing early does nothing.
            mn.handle_timeout(t - Duration::from_millis(1));
            assert!(mn.poll_transmit().is_none());
            now = t;
            mn.handle_timeout(now);
        }
        let gaps: Vec<u64> = sends.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, [1, 2, 4, 4]);
        assert_eq!(now - T0, Duration::from_secs(15));
        assert!(gave_up);
        assert_eq!(mn.state(), State::Idle);
        // Timestamp mode: every retransmission is a new identification.
        assert_eq!(ids.len(), 5);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    // Reference: RFC 5944 § 3.6.2.1 (silently discard).
    #[test]
    fn discards_unsigned_wrong_key_and_wrong_id() {
        let mut mn = MobileNode::new(cfg());
        mn.register(T0);
        let (tx, _) = drain(&mut mn);
        let req = &tx[0];
        let now = T0 + Duration::from_millis(20);
        let unsigned = reply_with(req, ReplyCode::Accepted, 300, HOA, KEY, None, false);
        assert_eq!(
            mn.handle(now, ha_from(), &unsigned),
            Err(Discard::NoAuthenticator)
        );
        let wrong_key = reply_to(req, ReplyCode::Accepted, 300, HOA, b"not the key");
        assert_eq!(
            mn.handle(now, ha_from(), &wrong_key),
            Err(Discard::BadAuthenticator)
        );
        let id = parse_request(req).unwrap().fixed.identification;
        let other = Identification(id.0 ^ 1);
        let wrong_id = reply_with(req, ReplyCode::Accepted, 300, HOA, KEY, Some(other), true);
        assert_eq!(
            mn.handle(now, ha_from(), &wrong_id),
            Err(Discard::WrongIdentification)
        );
        assert_eq!(
            mn.handle(now, ha_from(), b"\x03short"),
            Err(Discard::Malformed)
        );
        let mut flipped = reply_to(req, ReplyCode::Accepted, 300, HOA, KEY);
        flipped[3] ^= 0xff; // lifetime tampered with after signing
        assert_eq!(
            mn.handle(now, ha_from(), &flipped),
            Err(Discard::BadAuthenticator)
        );
        assert_eq!(mn.state(), State::Registering);
        assert!(mn.poll_event().is_none());

        let good = reply_to(req, ReplyCode::Accepted, 200, HOA, KEY);
        assert_eq!(mn.handle(now, ha_from(), &good), Ok(()));
        assert_eq!(
            mn.poll_event(),
            Some(Event::Accepted {
                code: ReplyCode::Accepted,
                lifetime: 200,
                home_address: HOA,
                latency: Duration::from_millis(20),
                udp_tunnel: None,
            })
        );
        // A duplicate of the reply finds nothing outstanding.
        assert_eq!(mn.handle(now, ha_from(), &good), Err(Discard::NotWaiting));
    }

    // Reference: RFC 5944 § 5.7.1 and § 3.6.1.2 (133 carries the HA's time).
    #[test]
    fn timestamp_resync_on_133() {
        let mut mn = MobileNode::new(cfg());
        mn.register(T0);
        let (tx, _) = drain(&mut mn);
        let req_id = parse_request(&tx[0]).unwrap().fixed.identification;
        // The home agent's clock is 100 s ahead.
        let ha_now = T0 + Duration::from_secs(100);
        let ha_id =
            haven_proto::mip::ident::ha_identification_for_timestamp_mismatch(ha_now, req_id);
        let r = reply_with(
            &tx[0],
            ReplyCode::IdentificationMismatch,
            0,
            HOA,
            KEY,
            Some(ha_id),
            true,
        );
        let now = T0 + Duration::from_millis(10);
        mn.handle(now, ha_from(), &r).unwrap();
        let (tx2, ev) = drain(&mut mn);
        assert!(matches!(ev[..], [Event::Sent { attempt: 2, .. }]));
        let new_id = parse_request(&tx2[0]).unwrap().fixed.identification;
        haven_proto::mip::ident::check_timestamp(
            new_id,
            ha_now + Duration::from_millis(10),
            Duration::from_secs(1),
        )
        .unwrap();
        // A second 133 in the same registration is a denial.
        let ha_id = Identification::from_parts(ha_id.high(), new_id.low());
        let r = reply_with(
            &tx2[0],
            ReplyCode::IdentificationMismatch,
            0,
            HOA,
            KEY,
            Some(ha_id),
            true,
        );
        mn.handle(now, ha_from(), &r).unwrap();
        assert_eq!(
            mn.poll_event(),
            Some(Event::Denied {
                code: ReplyCode::IdentificationMismatch
            })
        );
        // Later registrations keep the learnt offset.
        mn.register(T0 + Duration::from_secs(2));
        let (tx3, _) = drain(&mut mn);
        let id3 = parse_request(&tx3[0]).unwrap().fixed.identification;
        haven_proto::mip::ident::check_timestamp(
            id3,
            ha_now + Duration::from_secs(2),
            Duration::from_secs(1),
        )
        .unwrap();
    }

    // Reference: RFC 5944 § 5.7.2 (nonces), § 3.6.3 (resent unchanged).
    #[test]
    fn nonce_mode_takes_ha_nonce() {
        let mut c = cfg();
        c.replay = ReplayMode::Nonce;
        let mut mn = MobileNode::new(c);
        mn.register(T0);
        let (tx, _) = drain(&mut mn);
        mn.handle_timeout(T0 + Duration::from_secs(1));
        let (tx_re, _) = drain(&mut mn);
        assert_eq!(tx, tx_re, "nonce retransmission is unchanged");
        let id = parse_request(&tx[0]).unwrap().fixed.identification;
        assert_eq!(id.ha_nonce(), 0);
        let ha_id = Identification::from_nonces(0xdead_beef, id.mn_nonce());
        let r = reply_with(
            &tx[0],
            ReplyCode::IdentificationMismatch,
            0,
            HOA,
            KEY,
            Some(ha_id),
            true,
        );
        mn.handle(T0 + Duration::from_secs(1), ha_from(), &r)
            .unwrap();
        let (tx2, _) = drain(&mut mn);
        let id2 = parse_request(&tx2[0]).unwrap().fixed.identification;
        assert_eq!(id2.ha_nonce(), 0xdead_beef);
        assert_ne!(id2.mn_nonce(), id.mn_nonce());
        let ha_id = Identification::from_nonces(0x1234_5678, id2.mn_nonce());
        let r = reply_with(
            &tx2[0],
            ReplyCode::Accepted,
            300,
            HOA,
            KEY,
            Some(ha_id),
            true,
        );
        mn.handle(T0 + Duration::from_secs(1), ha_from(), &r)
            .unwrap();
        assert!(matches!(
            std::iter::from_fn(|| mn.poll_event()).last(),
            Some(Event::Accepted { .. })
        ));
        mn.register(T0 + Duration::from_secs(5));
        let (tx3, _) = drain(&mut mn);
        assert_eq!(
            parse_request(&tx3[0])
                .unwrap()
                .fixed
                .identification
                .ha_nonce(),
            0x1234_5678
        );
    }

    // Reference: RFC 5944 § 3.6.2.2 (lifetime), re-registration at 80 %.
    #[test]
    fn reregisters_at_80_percent_then_deregisters() {
        let mut mn = MobileNode::new(cfg());
        mn.register(T0);
        let (tx, _) = drain(&mut mn);
        let r = reply_to(&tx[0], ReplyCode::Accepted, 100, HOA, KEY);
        mn.handle(T0 + Duration::from_millis(5), ha_from(), &r)
            .unwrap();
        drain(&mut mn);
        assert_eq!(mn.state(), State::Registered);
        assert_eq!(mn.poll_timeout(), Some(T0 + Duration::from_secs(80)));
        mn.handle_timeout(T0 + Duration::from_secs(79));
        assert!(mn.poll_transmit().is_none());
        mn.handle_timeout(T0 + Duration::from_secs(80));
        let (tx2, ev) = drain(&mut mn);
        assert_eq!(tx2.len(), 1);
        assert!(matches!(
            ev[..],
            [Event::Sent {
                attempt: 1,
                lifetime: 300,
                ..
            }]
        ));
        let id1 = parse_request(&tx[0]).unwrap().fixed.identification;
        let id2 = parse_request(&tx2[0]).unwrap().fixed.identification;
        assert!(id2 > id1);
        let r = reply_to(&tx2[0], ReplyCode::Accepted, 300, HOA, KEY);
        mn.handle(T0 + Duration::from_secs(80), ha_from(), &r)
            .unwrap();
        drain(&mut mn);
        assert_eq!(mn.poll_timeout(), Some(T0 + Duration::from_secs(80 + 240)));

        mn.deregister(T0 + Duration::from_secs(90));
        let (tx3, _) = drain(&mut mn);
        let p = parse_request(&tx3[0]).unwrap();
        assert_eq!(p.fixed.lifetime, 0);
        let r = reply_to(&tx3[0], ReplyCode::Accepted, 0, HOA, KEY);
        mn.handle(T0 + Duration::from_secs(90), ha_from(), &r)
            .unwrap();
        assert_eq!(mn.poll_event(), Some(Event::Deregistered));
        assert_eq!(mn.state(), State::Idle);
        assert_eq!(mn.poll_timeout(), None);
    }

    // Reference: RFC 2794 § 2 (home address 0.0.0.0, allocated in reply),
    // RFC 3519 § 3.2 (keepalive interval in the UDP Tunnel Reply).
    #[test]
    fn nai_dynamic_home_address_and_udp_tunnel() {
        let mut c = cfg();
        c.home_address = Ipv4Addr::UNSPECIFIED;
        c.nai = Some(b"mn7@example.com".to_vec());
        c.udp_tunnel = true;
        let mut mn = MobileNode::new(c);
        mn.register(T0);
        let (tx, _) = drain(&mut mn);
        let p = parse_request(&tx[0]).unwrap();
        assert_eq!(p.fixed.home_address, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            p.covered(ExtensionType::MnNai),
            Some(&Extension::MnNai(b"mn7@example.com"))
        );
        let alloc = Ipv4Addr::new(198, 18, 4, 7);
        let r = reply_to(&tx[0], ReplyCode::Accepted, 300, alloc, KEY);
        mn.handle(T0, ha_from(), &r).unwrap();
        let ev = std::iter::from_fn(|| mn.poll_event()).last();
        assert!(matches!(
            ev,
            Some(Event::Accepted { home_address, udp_tunnel: Some(k), .. })
                if home_address == alloc && k == Duration::from_secs(25)
        ));
        assert_eq!(mn.home_address(), alloc);
        assert_eq!(mn.binding().map(|b| b.home_address), Some(alloc));
    }

    #[test]
    fn denied_and_move() {
        let mut mn = MobileNode::new(cfg());
        mn.register(T0);
        let (tx, _) = drain(&mut mn);
        let r = reply_to(&tx[0], ReplyCode::AdministrativelyProhibited, 0, HOA, KEY);
        mn.handle(T0, ha_from(), &r).unwrap();
        assert_eq!(
            mn.poll_event(),
            Some(Event::Denied {
                code: ReplyCode::AdministrativelyProhibited
            })
        );
        assert_eq!(mn.poll_timeout(), None);
        let new_coa = Ipv4Addr::new(203, 0, 113, 99);
        mn.move_to(T0 + Duration::from_secs(1), new_coa);
        let (tx2, _) = drain(&mut mn);
        assert_eq!(
            parse_request(&tx2[0]).unwrap().fixed.care_of_address,
            new_coa
        );
    }

    #[test]
    fn late_reply_to_earlier_transmission_accepted() {
        let mut mn = MobileNode::new(cfg());
        mn.register(T0);
        let (tx1, _) = drain(&mut mn);
        mn.handle_timeout(T0 + Duration::from_secs(1));
        drain(&mut mn);
        let r = reply_to(&tx1[0], ReplyCode::Accepted, 300, HOA, KEY);
        mn.handle(T0 + Duration::from_millis(1500), ha_from(), &r)
            .unwrap();
        assert!(matches!(
            mn.poll_event(),
            Some(Event::Accepted { latency, .. }) if latency == Duration::from_millis(1500)
        ));
        // Lifetime counts from the transmission that was answered.
        assert_eq!(mn.binding().unwrap().expires, T0 + Duration::from_secs(300));
    }

    #[test]
    fn prefix_suffix_algorithm() {
        let mut c = cfg();
        c.algorithm = Algorithm::PrefixSuffixMd5;
        let mut mn = MobileNode::new(c);
        mn.register(T0);
        let (tx, _) = drain(&mut mn);
        let at = auth::find_mn_ha(&tx[0]).unwrap().unwrap();
        at.verify(Algorithm::PrefixSuffixMd5, KEY, &tx[0]).unwrap();
        assert!(at.verify(Algorithm::HmacMd5, KEY, &tx[0]).is_err());
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 0 from the reference implementation
        // (Vigna, splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }
}
