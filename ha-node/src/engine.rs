//! The registration engine of the home agent [RFC 5944 § 3.8]: sans-IO.
//!
//! The engine is a function of (request bytes, source address, `now`,
//! replicated state) → (Registration Reply, replicated [`Command`]). It owns
//! no socket, reads no clock and draws no random number ([DESIGN.md § 2],
//! STYLE.md § 3, as `quinn-proto` is to `quinn`): the daemon feeds it
//! datagrams ([`Engine::handle`]), applied log entries
//! ([`Engine::handle_applied`]) and timer expiries ([`Engine::handle_timeout`]),
//! and pulls what it produced: replies ([`Engine::poll_transmit`]), proposals
//! for the replicator ([`Engine::poll_proposal`]) and events for metrics and
//! logs ([`Engine::poll_event`]).
//!
//! # Life of a registration
//!
//! An acceptable request becomes a [`Command::Register`] (or
//! [`Command::Deregister`]) proposal tagged with a [`RequestId`]. The reply
//! leaves only when that entry comes back applied on this node
//! ([DESIGN.md § 4]); what it says follows the [`ApplyResult`], which every
//! replica computes identically (pool allocation, simultaneous-binding
//! limit). A proposal the replicator refuses ([`Engine::proposal_failed`]) or
//! that is not applied within `commit_timeout` is dropped without a reply —
//! the mobile node retransmits [RFC 5944 § 3.6.3] — and an apply arriving
//! after the timeout is not answered either. One request per mobile node is
//! in flight at a time; a second one meanwhile is dropped (`Busy`).
//!
//! # Order of checks
//!
//! [RFC 5944 § 3.8.2.1] lists authentication (a), identification (b) and
//! foreign agent authentication (c) in that order, then the remaining
//! validity checks. haven checks, first failure wins:
//!
//! 1. the realm, from the address and port the datagram was sent to (the
//!    VIP); unknown → dropped (`UnknownRealm`), no reply;
//! 2. the fixed part: type ≠ 1 → dropped (`NotRegistration`); shorter than
//!    24 bytes → dropped (`Malformed`): there is nothing to answer;
//! 3. framing and extension order ([`parse_request`]: unknown non-skippable
//!    extension [RFC 5944 § 1.9], bad length, MN-FA/FA-HA before MN-HA
//!    [RFC 5944 § 3.6.1.3], MN-NAI after MN-HA [RFC 2794 § 2]) → 134;
//!    HoA 0.0.0.0 without an MN-NAI → 134 [RFC 2794 § 2];
//! 4. authentication [RFC 5944 § 3.8.2.1 (a)]: exactly one MN-HA
//!    extension (an MN-AAA one is not supported here), a security
//!    association for the MN — by home address, or by NAI when the home
//!    address is 0.0.0.0 or has no association of its own — with that SPI,
//!    and a valid authenticator → else 131;
//! 5. busy: a request of the same MN already in flight → dropped (`Busy`);
//! 6. identification [RFC 5944 § 3.8.2.1 (b), § 5.7] → else 133 (see
//!    below);
//! 7. foreign agent [RFC 5944 § 3.8.2.1 (c)]: when haven shares an FA-HA
//!    association with the sender ([`Engine::add_foreign_agent`]), exactly
//!    one FA-HA extension with that SPI and a valid authenticator → else 132;
//! 8. the Home Agent field must be the realm's VIP → else 136, the reply's
//!    Home Agent field carrying the VIP [RFC 5944 § 3.8.2.1, § 3.4];
//! 9. a CVSE covered by the MN-HA authenticator: haven knows no CVSE type,
//!    so → 140 [RFC 3115 § 3, § 5] (an NVSE is skipped [RFC 3115 § 4]);
//! 10. home address: an MN known by its home address must ask for one
//!     inside the realm's home prefix; an MN known by its NAI must ask for
//!     0.0.0.0 (allocation, which needs a pool) or for an address of the
//!     realm's pool — never a fixed address, which belongs to another MN —
//!     → else 129 (administratively prohibited [RFC 5944 § 3.4]);
//!
//! Registrations (lifetime > 0 and CoA ≠ HoA) are then checked for:
//!
//! 11. reverse tunnelling [RFC 3024 § 4.2.3]: T set and forbidden → 137;
//!     T unset and required → 138;
//! 12. encapsulation: M (minimal) or G (GRE) set → 139 [RFC 3024 § 4.3]:
//!     haven tunnels IP in IP [RFC 2003] and RFC 3519 UDP only;
//! 13. UDP tunnelling [RFC 3519 § 3.1–3.2]: a UDP Tunnel Request counts
//!     when the source address differs from the CoA (a NAT on the way) or
//!     its F bit is set; then a realm without `udp_tunnel`, or an
//!     encapsulation other than IP in IP (4), → 142; otherwise the reply
//!     carries a UDP Tunnel Reply (code 0, the realm's keepalive interval)
//!     and the binding records `Encap::Udp { nat: source }`. A request
//!     without it, NAT or not, gets IP in IP (the MN did not ask);
//! 14. a CoA that is 0.0.0.0, broadcast or multicast → 134.
//!
//! Then the command: lifetime 0 with CoA ≠ HoA deregisters that care-of
//! address only; CoA = HoA (any lifetime: the MN is home) deregisters all
//! of them [RFC 5944 § 3.6.1.2, § 3.8.2]. Otherwise the lifetime is clamped
//! to the realm's `max_lifetime_secs` (the reply carries the granted one
//! [RFC 5944 § 3.8.3.1]) and the S bit is passed on: the state machine keeps
//! up to `simultaneous_bindings` care-of addresses (135 beyond) or, with a
//! limit of 1, replaces the binding and the reply says code 1
//! [RFC 5944 § 3.4, § 3.6.1.2].
//!
//! # Replies and security
//!
//! Malformed or unauthenticated requests never produce a command. Replies
//! to an authenticated MN carry an MN-HA authentication extension under the
//! MN's association [RFC 5944 § 3.5.2]; denials of an MN that could not be
//! authenticated (steps 3–4) go out unsigned (the MN discards them, but it
//! learns nothing and an operator sees the code on the wire), counted in
//! [`EngineStats::unsigned_replies`]; [`Engine::set_reply_unauthenticated`]
//! turns them into silent drops (`Unauthenticated`). A reply leaves from the
//! VIP and port the request was sent to, towards the request's source
//! address and port (behind a NAT, its mapping) [RFC 5944 § 3.8.3.1].
//!
//! # Identification [RFC 5944 § 5.7]
//!
//! The last accepted identification of every MN is replicated state
//! ([`BindingTable::last_identification`], kept after deregistration in the
//! replay memory), so every node of a cluster judges a request alike and a
//! replay sent to another node after failover is still refused.
//!
//! * Timestamps [RFC 5944 § 5.7.1]: within `timestamp_tolerance` of `now`
//!   and strictly newer than the last accepted one; else 133 with the
//!   HA's time in the high 32 bits and the request's low 32 bits
//!   ([`ha_identification_for_timestamp_mismatch`]). Accepted replies echo
//!   the request's identification.
//! * Nonces [RFC 5944 § 5.7.2]: the high 32 bits of a request must be the
//!   nonce the HA handed out last. haven derives it, rather than drawing
//!   it, so every replica expects the same nonce from replicated state: the
//!   first four octets (big-endian) of HMAC-MD5 under the MN's key over
//!   `"haven-nonce-v1" ‖ realm (u16) ‖ identity ‖ last (u64)`, where
//!   identity is `0x00 ‖ home address` or `0x01 ‖ NAI` (how the MN's
//!   association was found) and last is the last accepted identification
//!   (0 if none). After an accepted request the next nonce is the same
//!   function of that request's identification. A mismatch gets 133 with
//!   the expected nonce high and the MN's nonce low; every reply carries
//!   the nonce the MN must use next.
//!
//! A Register or Deregister records the last identification it was
//! validated against (`validated_against`); the state machine refuses it
//! at apply time when another request of the MN was committed in between
//! ([`Refusal::Stale`](crate::command::Refusal::Stale), module docs of
//! [`crate::command`]). The proposing node then answers 133 built from the
//! state at reply time: the HA's time (timestamps) or the nonce that
//! follows the request that overtook it (nonces).
//!
//! # Expiry
//!
//! The expiry schedule lives in the [`StateMachine`](crate::command::StateMachine)
//! that the replicator owns, next to the engine in the driver; the driver
//! lends it to [`Engine::poll_timeout`] and [`Engine::handle_timeout`]
//! ([`StateMachine::expiry_schedule`](crate::command::StateMachine::expiry_schedule)),
//! so the engine keeps no copy (a mirror cost ≈ 164 heap bytes per binding,
//! BENCHMARKS.md) and a snapshot install needs no resynchronisation.
//! [`Engine::poll_timeout`] includes the next expiry;
//! [`Engine::handle_timeout`] proposes one [`Command::Expire`] per expired
//! care-of address, not again while it is in flight (a failed or lost one is
//! retried after `commit_timeout`); one for a binding refreshed or removed
//! before it is applied does nothing (its `expires_at` no longer matches).
//! [`Engine::set_propose_expiries`] lets a cluster driver keep only one node
//! (the leader) proposing.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use haven_proto::mip::ReplyCode;
use haven_proto::mip::auth::{self, Algorithm};
use haven_proto::mip::ext::{
    AuthKind, Encapsulation, Extension, ExtensionType, Extensions, Located, MessageBuilder,
    ParsedRequest, TunnelReplyCode, UdpTunnelReply, parse_request,
};
use haven_proto::mip::ident::{
    Identification, check_timestamp, ha_identification_for_timestamp_mismatch, must_be_newer,
};
use haven_proto::mip::registration::{
    REQUEST_LEN, REQUEST_TYPE, ReplyRepr, RequestPacket, RequestRepr,
};

use crate::binding::{BindingTable, CareOf, Encap, Expiry, ExpirySchedule, Identity, MnId, Nai};
use crate::command::{ApplyResult, Command};
use crate::config::{Prefix, RealmConfig, RealmId, ReplayMode, ReverseTunnelPolicy};
use crate::replicate::{Applied, RequestId};
use crate::subscriber::{SecurityAssociation, SubscriberBackend};

/// Engine settings (from `[registration]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Accepted clock difference of timestamp identifications
    /// [RFC 5944 § 5.7.1]; default 7 s.
    pub timestamp_tolerance: Duration,
    /// Timestamp or nonce replay protection [RFC 5944 § 5.7].
    pub replay: ReplayMode,
    /// Longest wait for a proposal to be applied before the request is
    /// dropped without a reply; default 2 s.
    pub commit_timeout: Duration,
}

impl EngineConfig {
    /// The `[registration]` section of a configuration.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let r = &cfg.registration;
        Self {
            timestamp_tolerance: Duration::from_secs(u64::from(r.timestamp_tolerance_secs)),
            replay: r.replay,
            commit_timeout: Duration::from_millis(u64::from(r.max_commit_ms)),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self::from_config(&crate::config::Config::default())
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The VIP and port the request was sent to (the reply's source).
    pub src: SocketAddrV4,
    /// The request's source address and port.
    pub dst: SocketAddrV4,
    /// The Registration Reply.
    pub payload: Vec<u8>,
}

/// Something the daemon may count or log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A reply was sent (accepted or denied).
    Replied {
        /// Realm.
        realm: RealmId,
        /// Reply code [RFC 5944 § 3.4].
        code: u8,
        /// From reception of the request to the reply.
        latency: Duration,
    },
    /// A request was dropped without a reply.
    Dropped {
        /// Realm, when known.
        realm: Option<RealmId>,
        /// Why.
        reason: DropReason,
    },
    /// An `Expire` command was applied and removed a care-of address.
    Expired {
        /// Realm.
        realm: RealmId,
        /// Home address.
        home_address: Ipv4Addr,
    },
    /// An admin removal was applied and removed a binding.
    Removed {
        /// Realm.
        realm: RealmId,
        /// Home address.
        home_address: Ipv4Addr,
    },
}

/// Why a request got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a Registration Request (type ≠ 1).
    NotRegistration,
    /// Not even a fixed part (shorter than 24 bytes).
    Malformed,
    /// Sent to an address and port that is no realm's.
    UnknownRealm,
    /// A denial of an MN that could not be authenticated, when unsigned
    /// replies are turned off ([`Engine::set_reply_unauthenticated`]).
    Unauthenticated,
    /// A request of the same MN is already in flight.
    Busy,
    /// The proposal was not applied within the commit timeout.
    CommitTimeout,
    /// The replicator refused the proposal (no quorum).
    ReplicationUnavailable,
}

impl DropReason {
    /// A stable label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::NotRegistration => "not_registration",
            DropReason::Malformed => "malformed",
            DropReason::UnknownRealm => "unknown_realm",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Busy => "busy",
            DropReason::CommitTimeout => "commit_timeout",
            DropReason::ReplicationUnavailable => "replication_unavailable",
        }
    }
}

/// What [`Engine::handle`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// An authenticated, acceptable request: a command was proposed.
    Proposed,
    /// A retransmission of a request still being replicated.
    Busy,
    /// Dropped or denied at reception (every other outcome).
    Refused,
}

/// Plain counters (STYLE.md § 7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Datagrams handed to [`Engine::handle`].
    pub received: u64,
    /// Replies sent.
    pub replies: u64,
    /// Replies with code 0 or 1.
    pub accepted: u64,
    /// Replies with any other code.
    pub denied: u64,
    /// Denials sent without an authenticator (MN not authenticated).
    pub unsigned_replies: u64,
    /// Requests dropped without a reply (every reason).
    pub dropped: u64,
    /// Of which: commit timeouts.
    pub commit_timeouts: u64,
    /// Of which: replicator refusals.
    pub replication_unavailable: u64,
    /// Of which: busy.
    pub busy: u64,
    /// Proposals queued (registrations, expiries, admin removals).
    pub proposals: u64,
    /// `Expire` proposals queued.
    pub expiries_proposed: u64,
    /// Registrations waiting for their apply now.
    pub in_flight: u64,
}

/// A realm's policy, as the engine needs it.
#[derive(Debug, Clone)]
struct Realm {
    vip: Ipv4Addr,
    home_prefix: Option<Prefix>,
    pool: Option<(Ipv4Addr, Ipv4Addr)>,
    max_lifetime: u16,
    reverse_tunnel: ReverseTunnelPolicy,
    udp_tunnel: bool,
    keepalive: u16,
}

impl Realm {
    fn in_pool(&self, a: Ipv4Addr) -> bool {
        self.pool.is_some_and(|(f, l)| f <= a && a <= l)
    }
}

/// What the reply to a proposed registration needs.
#[derive(Debug, Clone)]
struct Pending {
    realm: RealmId,
    mn: (RealmId, Identity),
    to: SocketAddrV4,
    from: SocketAddrV4,
    vip: Ipv4Addr,
    sa: Arc<SecurityAssociation>,
    request_home_address: Ipv4Addr,
    /// Identification of an accepted reply.
    accept_ident: Identification,
    /// The request's Identification (a reply refused at apply time is
    /// built from it and the state then: `refusal_identification`).
    ident: Identification,
    lifetime: u16,
    simultaneous: bool,
    udp: Option<UdpTunnelReply>,
    received: Duration,
    deadline: Duration,
}

/// The result of checking a request.
enum Verdict {
    Drop(DropReason),
    Deny(Denial),
    Propose(Box<Pending>, Command),
}

/// A reply decided at reception.
struct Denial {
    code: ReplyCode,
    home_address: Ipv4Addr,
    identification: Identification,
    sa: Option<Arc<SecurityAssociation>>,
}

/// An MN as identified by its security association.
struct Mn {
    sa: Arc<SecurityAssociation>,
    identity: Identity,
    nai: Option<Nai>,
}

/// The registration engine (one per node, all realms).
pub struct Engine {
    config: EngineConfig,
    realms: Vec<Realm>,
    by_addr: HashMap<SocketAddrV4, RealmId>,
    by_name: HashMap<String, RealmId>,
    subscribers: Arc<dyn SubscriberBackend>,
    table: Arc<BindingTable>,
    foreign_agents: HashMap<(RealmId, Ipv4Addr), Arc<SecurityAssociation>>,
    reply_unauthenticated: bool,
    propose_expiries: bool,
    next_id: u64,
    pending: HashMap<RequestId, Pending>,
    deadlines: BTreeSet<(Duration, RequestId)>,
    busy: HashSet<(RealmId, Identity)>,
    admin: HashSet<RequestId>,
    /// Expire proposals in flight: expiry → (id, retry time).
    expiring: HashMap<RequestId, (Expiry, Duration)>,
    expiring_set: BTreeSet<Expiry>,
    expiry_retries: BTreeSet<(Duration, RequestId)>,
    transmits: VecDeque<Transmit>,
    proposals: VecDeque<(RequestId, Command)>,
    events: VecDeque<Event>,
    stats: EngineStats,
    last_now: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("realms", &self.realms.len())
            .field("in_flight", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Byte ranges of a short-form authentication extension in the message:
/// (protected data, authenticator) [RFC 5944 § 3.5.1].
fn auth_ranges(l: &Located<'_>) -> (Range<usize>, Range<usize>) {
    let start = REQUEST_LEN + l.offset;
    let spi_end = start + 2 + 4;
    (0..spi_end, spi_end..start + l.len)
}

fn verify_at(sa: &SecurityAssociation, bytes: &[u8], l: &Located<'_>) -> bool {
    let (covered, authenticator) = auth_ranges(l);
    match (bytes.get(covered), bytes.get(authenticator)) {
        (Some(c), Some(a)) => auth::verify(sa.algorithm, sa.key.as_bytes(), c, a).is_ok(),
        _ => false,
    }
}

/// The HA nonce expected from an MN (see the module docs).
pub fn derive_nonce(key: &[u8], realm: RealmId, identity: &Identity, last: u64) -> u32 {
    let mut data = Vec::with_capacity(14 + 2 + 256 + 8);
    data.extend_from_slice(b"haven-nonce-v1");
    data.extend_from_slice(&realm.0.to_be_bytes());
    match identity {
        Identity::HomeAddress(a) => {
            data.push(0);
            data.extend_from_slice(&a.octets());
        }
        Identity::Nai(n) => {
            data.push(1);
            data.extend_from_slice(n.as_bytes());
        }
    }
    data.extend_from_slice(&last.to_be_bytes());
    let mac = auth::compute(Algorithm::HmacMd5, key, &data);
    u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]])
}

impl Engine {
    /// An engine for these realms (index = [`RealmId`], as in the config).
    pub fn new(
        config: EngineConfig,
        realms: &[RealmConfig],
        subscribers: Arc<dyn SubscriberBackend>,
        table: Arc<BindingTable>,
    ) -> Self {
        let mut by_addr = HashMap::new();
        let mut by_name = HashMap::new();
        let mut rs = Vec::new();
        for (i, r) in realms.iter().enumerate() {
            let Ok(id) = u16::try_from(i).map(RealmId) else {
                break;
            };
            by_addr.insert(SocketAddrV4::new(r.vip, r.port), id);
            by_name.insert(r.name.clone(), id);
            rs.push(Realm {
                vip: r.vip,
                home_prefix: r.home_prefix,
                pool: r.pool.map(|p| (p.first, p.last)),
                max_lifetime: r.max_lifetime_secs,
                reverse_tunnel: r.reverse_tunnel,
                udp_tunnel: r.udp_tunnel,
                keepalive: r.keepalive_interval_secs,
            });
        }
        Self {
            config,
            realms: rs,
            by_addr,
            by_name,
            subscribers,
            table,
            foreign_agents: HashMap::new(),
            reply_unauthenticated: true,
            propose_expiries: true,
            next_id: 0,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            busy: HashSet::new(),
            admin: HashSet::new(),
            expiring: HashMap::new(),
            expiring_set: BTreeSet::new(),
            expiry_retries: BTreeSet::new(),
            transmits: VecDeque::new(),
            proposals: VecDeque::new(),
            events: VecDeque::new(),
            stats: EngineStats::default(),
            last_now: Duration::ZERO,
        }
    }

    /// Declares an FA-HA security association with the foreign agent at
    /// `fa` (the source address of the requests it relays): its requests
    /// must then carry a valid FA-HA extension [RFC 5944 § 3.8.2.1 (c)].
    pub fn add_foreign_agent(
        &mut self,
        realm: RealmId,
        fa: Ipv4Addr,
        sa: Arc<SecurityAssociation>,
    ) {
        self.foreign_agents.insert((realm, fa), sa);
    }

    /// Whether denials of unauthenticated MNs are answered (unsigned; the
    /// default) or dropped (`Unauthenticated`).
    pub fn set_reply_unauthenticated(&mut self, on: bool) {
        self.reply_unauthenticated = on;
    }

    /// Whether this node proposes `Expire` commands (default true). In a
    /// cluster the driver may leave only the leader proposing to avoid
    /// duplicate (harmless, stale) entries.
    pub fn set_propose_expiries(&mut self, on: bool) {
        self.propose_expiries = on;
    }

    /// The realm named `name`.
    pub fn realm_by_name(&self, name: &str) -> Option<RealmId> {
        self.by_name.get(name).copied()
    }

    /// The counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.in_flight = self.pending.len() as u64;
        s
    }

    fn next_request_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn drop_event(&mut self, realm: Option<RealmId>, reason: DropReason) {
        self.stats.dropped += 1;
        match reason {
            DropReason::CommitTimeout => self.stats.commit_timeouts += 1,
            DropReason::ReplicationUnavailable => self.stats.replication_unavailable += 1,
            DropReason::Busy => self.stats.busy += 1,
            _ => {}
        }
        self.events.push_back(Event::Dropped { realm, reason });
    }

    /// A datagram arrived on a realm socket (`src` = the sender as seen,
    /// behind a NAT its mapping; `dst` = the VIP and port it was sent to).
    /// Returns what became of it, for the flood limiter (which charges a
    /// source for refused datagrams only).
    pub fn handle(
        &mut self,
        now: Duration,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        bytes: &[u8],
    ) -> Handled {
        let (proposals, busy) = (self.stats.proposals, self.stats.busy);
        self.handle_datagram(now, src, dst, bytes);
        if self.stats.proposals != proposals {
            Handled::Proposed
        } else if self.stats.busy != busy {
            Handled::Busy
        } else {
            Handled::Refused
        }
    }

    fn handle_datagram(
        &mut self,
        now: Duration,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        bytes: &[u8],
    ) {
        self.last_now = self.last_now.max(now);
        self.stats.received += 1;
        let Some(&realm) = self.by_addr.get(&dst) else {
            self.drop_event(None, DropReason::UnknownRealm);
            return;
        };
        match bytes.first() {
            Some(&t) if t != REQUEST_TYPE => {
                self.drop_event(Some(realm), DropReason::NotRegistration);
                return;
            }
            _ => {}
        }
        let Ok(fixed) = RequestPacket::new_checked(bytes).and_then(|p| RequestRepr::parse(&p))
        else {
            self.drop_event(Some(realm), DropReason::Malformed);
            return;
        };
        match self.evaluate(now, realm, src, dst, &fixed, bytes) {
            Verdict::Drop(reason) => self.drop_event(Some(realm), reason),
            Verdict::Deny(d) => {
                if d.sa.is_none() && !self.reply_unauthenticated {
                    self.drop_event(Some(realm), DropReason::Unauthenticated);
                    return;
                }
                let vip = self
                    .realms
                    .get(usize::from(realm.0))
                    .map_or(dst.ip().to_owned(), |r| r.vip);
                let repr = ReplyRepr {
                    code: d.code,
                    lifetime: 0,
                    home_address: d.home_address,
                    home_agent: vip,
                    identification: d.identification,
                };
                self.send(
                    realm,
                    dst,
                    src,
                    &repr,
                    None,
                    d.sa.as_deref(),
                    Duration::ZERO,
                );
            }
            Verdict::Propose(p, cmd) => {
                let id = self.next_request_id();
                self.busy.insert(p.mn.clone());
                self.deadlines.insert((p.deadline, id));
                self.pending.insert(id, *p);
                self.proposals.push_back((id, cmd));
                self.stats.proposals += 1;
            }
        }
    }

    /// Builds, signs and queues a reply.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        realm: RealmId,
        from: SocketAddrV4,
        to: SocketAddrV4,
        repr: &ReplyRepr,
        udp: Option<&UdpTunnelReply>,
        sa: Option<&SecurityAssociation>,
        latency: Duration,
    ) {
        let mut b = MessageBuilder::reply(repr);
        if let Some(u) = udp {
            // A fixed-size extension: emitting it cannot fail.
            let _ = b.push(&Extension::UdpTunnelReply(*u));
        }
        match sa {
            Some(sa) => {
                b.sign(AuthKind::MnHa, sa.spi, sa.algorithm, sa.key.as_bytes());
            }
            None => self.stats.unsigned_replies += 1,
        }
        let code = u8::from(repr.code);
        self.stats.replies += 1;
        if repr.code.is_accepted() {
            self.stats.accepted += 1;
        } else {
            self.stats.denied += 1;
        }
        self.transmits.push_back(Transmit {
            src: from,
            dst: to,
            payload: b.finish(),
        });
        self.events.push_back(Event::Replied {
            realm,
            code,
            latency,
        });
    }

    /// Looks up the MN's association (step 4 of the module docs).
    fn find_mn(
        &self,
        realm: RealmId,
        home_address: Ipv4Addr,
        nai: Option<&Nai>,
        spi: u32,
    ) -> Option<Mn> {
        if !home_address.is_unspecified() {
            if let Some(sa) = self
                .subscribers
                .lookup(realm, MnId::HomeAddress(home_address), spi)
            {
                // The NAI of an MN authenticated by its home address is
                // not its credential: it must not enter the NAI index, or
                // it could claim another MN's NAI (and with it, that MN's
                // dynamic address).
                return Some(Mn {
                    sa,
                    identity: Identity::HomeAddress(home_address),
                    nai: None,
                });
            }
        }
        let n = nai?;
        let sa = self.subscribers.lookup(realm, MnId::Nai(n.as_str()), spi)?;
        Some(Mn {
            sa,
            identity: Identity::Nai(n.clone()),
            nai: Some(n.clone()),
        })
    }

    /// The last accepted identification of the MN: the newest of what its
    /// home address and its NAI remember (a binding with a NAI is
    /// remembered by the NAI once it is gone).
    ///
    /// `mn.nai` is `Some` exactly when the MN authenticated by NAI, so this
    /// is the function the state machine recomputes at apply time from the
    /// command's `home_address` and `nai` (the compare-and-set of
    /// [`Refusal::Stale`](crate::command::Refusal::Stale)).
    fn last_identification(&self, realm: RealmId, mn: &Mn, home_address: Ipv4Addr) -> Option<u64> {
        self.table
            .mn_last_identification(realm, home_address, mn.nai.as_ref())
    }

    /// The Identification of a reply to a request refused at apply time
    /// (any code): in timestamp mode the HA's time high, the request's low
    /// 32 bits [RFC 5944 § 5.7.1] for a 133, the request's own otherwise; in
    /// nonce mode the nonce the MN must use next, derived from the state
    /// as it is now — for a stale request a newer request of the MN has
    /// been accepted since it was validated, so the nonce computed then
    /// would not resynchronise it [RFC 5944 § 5.7.2].
    fn refusal_identification(
        &self,
        now: Duration,
        p: &Pending,
        code: ReplyCode,
    ) -> Identification {
        match self.config.replay {
            ReplayMode::Timestamp if code == ReplyCode::IdentificationMismatch => {
                ha_identification_for_timestamp_mismatch(now, p.ident)
            }
            ReplayMode::Timestamp => p.ident,
            ReplayMode::Nonce => {
                let nai = match &p.mn.1 {
                    Identity::Nai(n) => Some(n),
                    Identity::HomeAddress(_) => None,
                };
                let last = self
                    .table
                    .mn_last_identification(p.realm, p.request_home_address, nai);
                let nonce = derive_nonce(p.sa.key.as_bytes(), p.realm, &p.mn.1, last.unwrap_or(0));
                Identification::from_nonces(nonce, p.ident.mn_nonce())
            }
        }
    }

    fn evaluate(
        &self,
        now: Duration,
        realm_id: RealmId,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        fixed: &RequestRepr,
        bytes: &[u8],
    ) -> Verdict {
        let Some(realm) = self.realms.get(usize::from(realm_id.0)) else {
            return Verdict::Drop(DropReason::UnknownRealm);
        };
        let ident = fixed.identification;
        let unsigned = |code: ReplyCode| {
            Verdict::Deny(Denial {
                code,
                home_address: fixed.home_address,
                identification: ident,
                sa: None,
            })
        };
        // 3. Framing [RFC 5944 § 1.9, § 3.6.1.3].
        let parsed: ParsedRequest<'_> = match parse_request(bytes) {
            Ok(p) => p,
            Err(e) => return self.deny_unparsed(realm_id, fixed, bytes, ReplyCode::from(e)),
        };
        let nai = match parsed.covered(ExtensionType::MnNai) {
            Some(Extension::MnNai(b)) => match std::str::from_utf8(b).ok().and_then(Nai::new) {
                Some(n) => Some(n),
                None => return unsigned(ReplyCode::PoorlyFormedRequest),
            },
            _ => None,
        };
        if fixed.home_address.is_unspecified() && nai.is_none() {
            // [RFC 2794 § 2]: HoA 0.0.0.0 asks for an address by NAI.
            return unsigned(ReplyCode::PoorlyFormedRequest);
        }
        // 4. Authentication [RFC 5944 § 3.8.2.1 (a)].
        let Some(mn_ha_at) = parsed.authorization.and_then(|i| parsed.extensions.get(i)) else {
            return unsigned(ReplyCode::MobileNodeFailedAuthentication);
        };
        let Some(mn_ha) = parsed.mn_ha() else {
            // An MN-AAA authorization: no AAA backend here.
            return unsigned(ReplyCode::MobileNodeFailedAuthentication);
        };
        let Some(mn) = self.find_mn(realm_id, fixed.home_address, nai.as_ref(), mn_ha.spi) else {
            return unsigned(ReplyCode::MobileNodeFailedAuthentication);
        };
        if !verify_at(&mn.sa, bytes, mn_ha_at) {
            return unsigned(ReplyCode::MobileNodeFailedAuthentication);
        }
        // From here on the MN is authenticated: every reply is signed.
        // 5. One request per MN in flight.
        let mn_key = (realm_id, mn.identity.clone());
        if self.busy.contains(&mn_key) {
            return Verdict::Drop(DropReason::Busy);
        }
        // 6. Identification [RFC 5944 § 5.7].
        let last = self.last_identification(realm_id, &mn, fixed.home_address);
        let (deny_ident, accept_ident) = match self.config.replay {
            ReplayMode::Timestamp => (ident, ident),
            ReplayMode::Nonce => {
                let key = mn.sa.key.as_bytes();
                let expected = derive_nonce(key, realm_id, &mn.identity, last.unwrap_or(0));
                let next = derive_nonce(key, realm_id, &mn.identity, ident.0);
                (
                    Identification::from_nonces(expected, ident.mn_nonce()),
                    Identification::from_nonces(next, ident.mn_nonce()),
                )
            }
        };
        let signed = |code: ReplyCode, identification: Identification| {
            Verdict::Deny(Denial {
                code,
                home_address: fixed.home_address,
                identification,
                sa: Some(Arc::clone(&mn.sa)),
            })
        };
        match self.config.replay {
            ReplayMode::Timestamp => {
                let fresh = check_timestamp(ident, now, self.config.timestamp_tolerance).is_ok()
                    && last.is_none_or(|l| must_be_newer(ident, Identification(l)).is_ok());
                if !fresh {
                    return signed(
                        ReplyCode::IdentificationMismatch,
                        ha_identification_for_timestamp_mismatch(now, ident),
                    );
                }
            }
            ReplayMode::Nonce => {
                if ident.ha_nonce() != deny_ident.ha_nonce() {
                    return signed(ReplyCode::IdentificationMismatch, deny_ident);
                }
            }
        }
        // 7. Foreign agent [RFC 5944 § 3.8.2.1 (c)].
        if let Some(fa_sa) = self.foreign_agents.get(&(realm_id, *src.ip())) {
            let ok = parsed
                .fa_ha
                .and_then(|i| parsed.extensions.get(i))
                .is_some_and(|l| match l.extension {
                    Extension::FaHaAuth(a) => a.spi == fa_sa.spi && verify_at(fa_sa, bytes, l),
                    _ => false,
                });
            if !ok {
                return signed(ReplyCode::ForeignAgentFailedAuthentication, deny_ident);
            }
        }
        // 8. Home Agent field [RFC 5944 § 3.8.2.1].
        if fixed.home_agent != realm.vip {
            return signed(ReplyCode::UnknownHomeAgentAddress, deny_ident);
        }
        // 9. CVSE [RFC 3115 § 5]: no CVSE type is known to haven.
        if parsed
            .covered_by_authorization()
            .iter()
            .any(|l| matches!(l.extension, Extension::Cvse(_)))
        {
            return signed(ReplyCode::UnsupportedVendorMn, deny_ident);
        }
        // 10. Home address.
        let hoa = fixed.home_address;
        let allowed = match &mn.identity {
            Identity::HomeAddress(_) => realm.home_prefix.is_some_and(|p| p.contains(hoa)),
            Identity::Nai(_) => {
                (hoa.is_unspecified() && realm.pool.is_some()) || realm.in_pool(hoa)
            }
        };
        if !allowed {
            return signed(ReplyCode::AdministrativelyProhibited, deny_ident);
        }
        let flags = fixed.flags;
        let coa = fixed.care_of_address;
        let pending = |lifetime: u16, udp: Option<UdpTunnelReply>| {
            Box::new(Pending {
                realm: realm_id,
                mn: mn_key.clone(),
                to: src,
                from: dst,
                vip: realm.vip,
                sa: Arc::clone(&mn.sa),
                request_home_address: hoa,
                accept_ident,
                ident,
                lifetime,
                simultaneous: flags.simultaneous_bindings(),
                udp,
                received: now,
                deadline: now + self.config.commit_timeout,
            })
        };
        // Deregistration [RFC 5944 § 3.6.1.2, § 3.8.2]: CoA = HoA removes
        // every care-of address, lifetime 0 the named one. The tunnel
        // options of the request do not matter when nothing is bound.
        if coa == hoa || fixed.lifetime == 0 {
            let home_address = if hoa.is_unspecified() {
                nai.as_ref()
                    .and_then(|n| self.table.home_address_of(realm_id, n.as_str()))
                    .unwrap_or(hoa)
            } else {
                hoa
            };
            let cmd = Command::Deregister {
                realm: realm_id,
                home_address,
                nai: mn.nai.clone(),
                care_of: (coa != hoa).then_some(coa),
                identification: ident.0,
                // From the command's own fields, as `apply` will compute it.
                validated_against: self.table.mn_last_identification(
                    realm_id,
                    home_address,
                    mn.nai.as_ref(),
                ),
            };
            return Verdict::Propose(pending(0, None), cmd);
        }
        // 11. Reverse tunnelling [RFC 3024 § 4.2.3].
        let t = flags.reverse_tunnel();
        match realm.reverse_tunnel {
            ReverseTunnelPolicy::Forbidden if t => {
                return signed(ReplyCode::ReverseTunnelUnavailable, deny_ident);
            }
            ReverseTunnelPolicy::Required if !t => {
                return signed(ReplyCode::ReverseTunnelMandatory, deny_ident);
            }
            _ => {}
        }
        // 12. Encapsulation [RFC 3024 § 4.3, RFC 5944 § 3.3].
        if flags.minimal_encapsulation() || flags.gre_encapsulation() {
            return signed(ReplyCode::EncapsulationUnavailable, deny_ident);
        }
        // 13. UDP tunnelling [RFC 3519 § 3.1, § 3.2, § 3.4].
        let mut encap = Encap::IpInIp;
        let mut udp = None;
        if let Some(Extension::UdpTunnelRequest(r)) =
            parsed.covered(ExtensionType::UdpTunnelRequest)
        {
            let nat = *src.ip() != coa;
            if nat || r.force {
                if !realm.udp_tunnel || r.encapsulation != Encapsulation::IpInIp {
                    return signed(ReplyCode::UdpEncapsulationUnavailable, deny_ident);
                }
                encap = Encap::Udp { nat: src };
                udp = Some(UdpTunnelReply {
                    code: TunnelReplyCode::Accepted,
                    force: r.force,
                    keepalive_interval: realm.keepalive,
                });
            }
        }
        // 14. A care-of address must be one a tunnel can reach.
        if coa.is_unspecified() || coa.is_broadcast() || coa.is_multicast() {
            return signed(ReplyCode::PoorlyFormedRequest, deny_ident);
        }
        // The granted lifetime [RFC 5944 § 3.8.3.1]: at most the realm's.
        let lifetime = fixed.lifetime.min(realm.max_lifetime);
        let cmd = Command::Register {
            realm: realm_id,
            home_address: hoa,
            nai: mn.nai.clone(),
            care_of: CareOf {
                coa,
                registered_at: now,
                lifetime,
                encap,
                reverse_tunnel: t,
            },
            identification: ident.0,
            // The value the identification check above was made against.
            validated_against: last,
            simultaneous: flags.simultaneous_bindings(),
        };
        Verdict::Propose(pending(lifetime, udp), cmd)
    }

    /// A request that does not parse: sign the 134 if the MN-HA
    /// extension can still be found and verified, else send it unsigned.
    fn deny_unparsed(
        &self,
        realm: RealmId,
        fixed: &RequestRepr,
        bytes: &[u8],
        code: ReplyCode,
    ) -> Verdict {
        let area = bytes.get(REQUEST_LEN..).unwrap_or_default();
        let mut nai = None;
        let mut sa = None;
        for l in Extensions::new(area).located() {
            let Ok(l) = l else { break };
            match l.extension {
                Extension::MnNai(b) => {
                    nai = std::str::from_utf8(b).ok().and_then(Nai::new);
                }
                Extension::MnHaAuth(a) => {
                    sa = self
                        .find_mn(realm, fixed.home_address, nai.as_ref(), a.spi)
                        .filter(|mn| verify_at(&mn.sa, bytes, &l))
                        .map(|mn| mn.sa);
                    break;
                }
                _ => {}
            }
        }
        Verdict::Deny(Denial {
            code,
            home_address: fixed.home_address,
            identification: fixed.identification,
            sa,
        })
    }

    /// An applied log entry from the replicator (ours: `request` is
    /// `Some`; other nodes': `None`), in log order.
    pub fn handle_applied(&mut self, now: Duration, applied: &Applied) {
        self.last_now = self.last_now.max(now);
        match (&applied.command, &applied.result) {
            (Command::Register { .. } | Command::Deregister { .. }, _) => {}
            (
                Command::Expire {
                    realm,
                    home_address,
                    coa,
                    expires_at,
                },
                result,
            ) => {
                let e = Expiry {
                    expires_at: *expires_at,
                    realm: *realm,
                    home_address: *home_address,
                    coa: *coa,
                };
                self.expiring_set.remove(&e);
                if matches!(result, ApplyResult::Expired { removed: true }) {
                    self.events.push_back(Event::Expired {
                        realm: *realm,
                        home_address: *home_address,
                    });
                }
            }
            (
                Command::AdminRemove {
                    realm,
                    home_address,
                },
                result,
            ) => {
                if matches!(result, ApplyResult::AdminRemoved { existed: true }) {
                    self.events.push_back(Event::Removed {
                        realm: *realm,
                        home_address: *home_address,
                    });
                }
            }
        }
        let Some(id) = applied.request else {
            return;
        };
        if let Some((e, retry)) = self.expiring.remove(&id) {
            self.expiry_retries.remove(&(retry, id));
            self.expiring_set.remove(&e);
            return;
        }
        if self.admin.remove(&id) {
            return;
        }
        let Some(p) = self.pending.remove(&id) else {
            // Timed out earlier, or not ours: never answered late.
            return;
        };
        self.deadlines.remove(&(p.deadline, id));
        self.busy.remove(&p.mn);
        if now >= p.deadline {
            self.drop_event(Some(p.realm), DropReason::CommitTimeout);
            return;
        }
        let (code, home_address, lifetime, identification, udp) = match applied.result {
            ApplyResult::Registered {
                home_address,
                simultaneous,
                ..
            } => {
                // [RFC 5944 § 3.4] code 1: S asked for, not honoured.
                let code = if p.simultaneous && !simultaneous {
                    ReplyCode::AcceptedNoSimultaneous
                } else {
                    ReplyCode::Accepted
                };
                (code, home_address, p.lifetime, p.accept_ident, p.udp)
            }
            ApplyResult::Deregistered { home_address, .. } => {
                (ReplyCode::Accepted, home_address, 0, p.accept_ident, None)
            }
            ApplyResult::Refused(r) => {
                let code = ReplyCode::from(r.reply_code());
                let identification = self.refusal_identification(now, &p, code);
                (code, p.request_home_address, 0, identification, None)
            }
            // Not a registration result: cannot happen for our ids.
            ApplyResult::Expired { .. } | ApplyResult::AdminRemoved { .. } => return,
        };
        let repr = ReplyRepr {
            code,
            lifetime,
            home_address,
            home_agent: p.vip,
            identification,
        };
        let latency = now.saturating_sub(p.received);
        self.send(
            p.realm,
            p.from,
            p.to,
            &repr,
            udp.as_ref(),
            Some(&p.sa),
            latency,
        );
    }

    /// Timers: commit timeouts and binding expiries due at `now`.
    /// `schedule` is this node's state machine's
    /// ([`StateMachine::expiry_schedule`](crate::command::StateMachine::expiry_schedule)).
    pub fn handle_timeout(&mut self, now: Duration, schedule: &ExpirySchedule) {
        self.last_now = self.last_now.max(now);
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, id));
            if let Some(p) = self.pending.remove(&id) {
                self.busy.remove(&p.mn);
                self.drop_event(Some(p.realm), DropReason::CommitTimeout);
            }
        }
        // Expire proposals lost or refused: allow a new one.
        while let Some(&(retry, id)) = self.expiry_retries.first() {
            if retry > now {
                break;
            }
            self.expiry_retries.remove(&(retry, id));
            if let Some((e, _)) = self.expiring.remove(&id) {
                self.expiring_set.remove(&e);
            }
        }
        if !self.propose_expiries {
            return;
        }
        let due: Vec<Expiry> = schedule
            .iter()
            .take_while(|e| e.expires_at <= now)
            .filter(|e| !self.expiring_set.contains(e))
            .collect();
        for e in due {
            let id = self.next_request_id();
            let retry = now + self.config.commit_timeout;
            self.expiring.insert(id, (e, retry));
            self.expiring_set.insert(e);
            self.expiry_retries.insert((retry, id));
            self.proposals.push_back((
                id,
                Command::Expire {
                    realm: e.realm,
                    home_address: e.home_address,
                    coa: e.coa,
                    expires_at: e.expires_at,
                },
            ));
            self.stats.proposals += 1;
            self.stats.expiries_proposed += 1;
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called
    /// (`schedule` as there).
    pub fn poll_timeout(&self, schedule: &ExpirySchedule) -> Option<Duration> {
        let commit = self.deadlines.first().map(|(d, _)| *d);
        let retry = self.expiry_retries.first().map(|(d, _)| *d);
        // Only the node that proposes expiries looks at the schedule; on
        // every other node this is called per driver iteration and must not
        // walk all bindings (it was 44 % of a follower's CPU under load).
        let expiry = self
            .propose_expiries
            .then(|| {
                schedule
                    .iter()
                    .find(|e| !self.expiring_set.contains(e))
                    .map(|e| e.expires_at)
            })
            .flatten();
        [commit, retry, expiry].into_iter().flatten().min()
    }

    /// The next reply to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next command to hand to `Replicator::propose`.
    pub fn poll_proposal(&mut self) -> Option<(RequestId, Command)> {
        self.proposals.pop_front()
    }

    /// `Replicator::propose` refused `id` (no quorum): the request is
    /// dropped, never acknowledged [DESIGN.md § 4].
    pub fn proposal_failed(&mut self, id: RequestId) {
        if let Some(p) = self.pending.remove(&id) {
            self.deadlines.remove(&(p.deadline, id));
            self.busy.remove(&p.mn);
            self.drop_event(Some(p.realm), DropReason::ReplicationUnavailable);
        } else if self.admin.remove(&id) {
            // The operator's call reports the failure itself.
        }
        // A refused Expire stays in flight until its retry time, so a
        // node without quorum does not spin on it.
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Admin API: queues an `AdminRemove` proposal.
    pub fn remove_binding(&mut self, realm: RealmId, home_address: Ipv4Addr) -> RequestId {
        let id = self.next_request_id();
        self.admin.insert(id);
        self.proposals.push_back((
            id,
            Command::AdminRemove {
                realm,
                home_address,
            },
        ));
        self.stats.proposals += 1;
        id
    }
}

#[cfg(test)]
mod tests;
