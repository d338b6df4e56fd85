//! Node health from the home-agent nodes' advertisements.
//!
//! Every node sends the dispatchers a VRRPv3-format advertisement each
//! interval ([`haven_proto::vrrp::VrrpRepr`]) whose priority is its capacity;
//! priority 0 means "draining" (DESIGN.md §5). A node that falls silent is
//! taken out of the Maglev table so its mobile nodes move to survivors, which
//! hold their bindings already (replication): this is how a SIGKILLed node
//! (panic = abort) is steered around within three intervals.
//!
//! ## Timing [RFC 5798 § 6.1]
//! A node silent for its own Master_Down_Interval — 3 × its advertised
//! interval + ((256 − priority) × interval) / 256 — is Down. The formula
//! is VRRP's, so a node's health timing is what an operator of VRRP expects,
//! and a higher-capacity node is (slightly) quicker to declare dead.
//!
//! ## Hysteresis
//! A Down node must advertise `rise` (default 3) times in a row, each within
//! Master_Down_Interval of the previous one, before it is Up again, so a
//! flapping node does not move flows back and forth. A node never heard from
//! since the dispatcher started (Unknown) is Up on its first advert: a freshly
//! started standby must converge at once to compute the master's table.
//!
//! ## Draining
//! Priority 0 makes a node Draining: it leaves the table at once, so its
//! flows move now, while it is still alive and answering what is in flight.
//! Maglev cannot tell which flows a node has, and tracking connections would
//! make the two dispatchers' choices diverge; moving flows is safe because
//! every node holds every binding. A draining node that advertises a non-zero
//! priority again is Up at once (it was never silent).
//!
//! ## Authentication
//! With `[health] key_file` ([`AdvertAuth`]), an advert must carry the HMAC
//! trailer and sequence number of [`haven_proto::advert_auth`] and its
//! sequence must be above the last one accepted from that node; anything
//! else is refused before it reaches the tracker, so a host that can spoof
//! a node's address can neither keep a dead node in the table nor drain a
//! live one (docs/security.md). Without a key, plain RFC 5798 adverts are
//! accepted (a trailer, if present, is ignored).

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use haven_proto::advert_auth::AuthAdvertRepr;
use haven_proto::vrrp::{PRIORITY_STOP, VrrpPacket, VrrpRepr};

use crate::NodeId;
use crate::vrrp::{centiseconds, master_down_interval};

/// Default number of consecutive adverts that bring a Down node back.
pub const DEFAULT_RISE: u32 = 3;

/// A node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not heard from since start; not in the table.
    Unknown,
    /// Advertising a non-zero priority; in the table.
    Up,
    /// Advertising priority 0; out of the table (module docs).
    Draining,
    /// Silent for Master_Down_Interval, or not yet back through hysteresis.
    Down,
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first advert since the dispatcher started.
    FirstAdvert,
    /// A Down node advertised `adverts` consecutive times.
    Recovered {
        /// The streak length (the configured rise).
        adverts: u32,
    },
    /// A draining node advertised a non-zero priority.
    DrainEnded,
    /// The node advertised priority 0 [RFC 5798 § 5.2.4].
    PriorityZero,
    /// No advert for `silent_for` ≥ `down_interval` [RFC 5798 § 6.1].
    Silent {
        /// Time since the last advert.
        silent_for: Duration,
        /// The node's Master_Down_Interval.
        down_interval: Duration,
    },
}

/// A health transition, for the table and for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// The node enters the table.
    NodeUp {
        /// Which node.
        node: NodeId,
        /// Why.
        reason: Reason,
    },
    /// The node leaves the table but is alive.
    NodeDraining {
        /// Which node.
        node: NodeId,
        /// Why.
        reason: Reason,
    },
    /// The node is dead to us.
    NodeDown {
        /// Which node.
        node: NodeId,
        /// Why.
        reason: Reason,
    },
}

impl HealthEvent {
    /// The node concerned.
    pub const fn node(&self) -> NodeId {
        match *self {
            Self::NodeUp { node, .. }
            | Self::NodeDraining { node, .. }
            | Self::NodeDown { node, .. } => node,
        }
    }
}

/// An advert [`HealthTracker::on_advert`] rejected (counted, no state change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// From a node not in the configuration.
    #[error("advert from unconfigured {0}")]
    UnknownNode(NodeId),
    /// An interval of 0 would make the node Down at once.
    #[error("advert with interval 0")]
    ZeroInterval,
}

/// The advert key shared with the nodes. `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct AdvertKey(Box<[u8]>);

impl AdvertKey {
    /// Wraps key bytes.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Self(bytes.into())
    }
    /// The key bytes (for the HMAC only).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for AdvertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdvertKey({} octets)", self.0.len())
    }
}

/// Why [`AdvertAuth::check`] refused an advert (counted, no state change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdvertRefusal {
    /// Not a VRRPv3 advert, or its checksum (which covers both addresses,
    /// so also a node sending to the wrong dispatcher address) fails.
    #[error("malformed advert: {0}")]
    Malformed(haven_proto::Error),
    /// A key is configured and the trailer is missing or its HMAC fails.
    #[error("advert without a valid authentication trailer")]
    Unauthenticated,
    /// Authentic, but not newer than the last advert accepted.
    #[error("replayed advert: sequence {sequence} not above {last}")]
    Replayed {
        /// The advert's sequence.
        sequence: u64,
        /// The highest accepted from this node.
        last: u64,
    },
}

impl AdvertRefusal {
    /// The `result` label of `haven_dispatcher_adverts_total`.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unauthenticated => "unauthenticated",
            Self::Replayed { .. } => "replayed",
        }
    }
}

/// Advert parsing and, with a key, authentication and replay refusal
/// (module docs). Sans-IO: the driver hands it the datagram and addresses.
#[derive(Debug, Clone)]
pub struct AdvertAuth {
    key: Option<AdvertKey>,
    /// The highest sequence accepted per node.
    last: BTreeMap<NodeId, u64>,
}

impl AdvertAuth {
    /// `None`: adverts are not authenticated.
    pub const fn new(key: Option<AdvertKey>) -> Self {
        Self {
            key,
            last: BTreeMap::new(),
        }
    }

    /// Whether a key is configured.
    pub const fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Parses an advert from `node` (at `src`) to this dispatcher's `dst`;
    /// with a key, verifies the trailer and records its sequence, which
    /// must be above the last recorded for `node`.
    pub fn check(
        &mut self,
        node: NodeId,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        bytes: &[u8],
    ) -> Result<VrrpRepr, AdvertRefusal> {
        let Some(key) = &self.key else {
            return VrrpPacket::new_checked(bytes)
                .and_then(|p| VrrpRepr::parse(&p, src, dst))
                .map_err(AdvertRefusal::Malformed);
        };
        let a = match AuthAdvertRepr::parse(bytes, src, dst, key.as_bytes()) {
            Ok(a) => a,
            Err(haven_proto::Error::Authentication) => return Err(AdvertRefusal::Unauthenticated),
            Err(e) => return Err(AdvertRefusal::Malformed(e)),
        };
        if let Some(&last) = self.last.get(&node)
            && a.sequence <= last
        {
            return Err(AdvertRefusal::Replayed {
                sequence: a.sequence,
                last,
            });
        }
        self.last.insert(node, a.sequence);
        Ok(a.advert)
    }
}

/// Counters for the daemon's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthStats {
    /// Adverts accepted.
    pub adverts: u64,
    /// Adverts rejected ([`HealthError`]).
    pub rejected: u64,
    /// Transitions to Up.
    pub up: u64,
    /// Transitions to Draining.
    pub draining: u64,
    /// Transitions to Down.
    pub down: u64,
}

#[derive(Debug, Clone)]
struct Node {
    state: NodeState,
    last_advert: Option<Instant>,
    priority: u8,
    interval: Duration,
    /// Consecutive adverts while Down.
    streak: u32,
}

impl Node {
    fn down_interval(&self) -> Duration {
        master_down_interval(self.priority, self.interval)
    }
    fn deadline(&self) -> Option<Instant> {
        self.last_advert.map(|t| t + self.down_interval())
    }
}

/// The health of every configured node (module docs).
#[derive(Debug, Clone)]
pub struct HealthTracker {
    rise: u32,
    nodes: BTreeMap<NodeId, Node>,
    events: VecDeque<HealthEvent>,
    stats: HealthStats,
}

impl HealthTracker {
    /// Tracks `nodes`, all Unknown. `rise` is clamped to at least 1.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>, rise: u32) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|id| {
                let n = Node {
                    state: NodeState::Unknown,
                    last_advert: None,
                    priority: 0,
                    interval: Duration::ZERO,
                    streak: 0,
                };
                (id, n)
            })
            .collect();
        Self {
            rise: rise.max(1),
            nodes,
            events: VecDeque::new(),
            stats: HealthStats::default(),
        }
    }

    /// An advert from `node` with its priority (capacity; 0 = draining) and
    /// Max Adver Int. Transitions are queued for [`HealthTracker::poll`];
    /// a node whose deadline has already passed is first marked Down.
    pub fn on_advert(
        &mut self,
        now: Instant,
        node: NodeId,
        priority: u8,
        interval: Duration,
    ) -> Result<(), HealthError> {
        let rise = self.rise;
        let Some(n) = self.nodes.get_mut(&node) else {
            self.stats.rejected += 1;
            return Err(HealthError::UnknownNode(node));
        };
        if interval.is_zero() {
            self.stats.rejected += 1;
            return Err(HealthError::ZeroInterval);
        }
        self.stats.adverts += 1;
        let mut out = Vec::with_capacity(2);
        if let Some(ev) = expire(node, n, now) {
            out.push(ev);
        }
        if n.state == NodeState::Down && n.deadline().is_some_and(|d| now >= d) {
            // The streak is of consecutive adverts: a gap as long as the
            // down interval breaks it.
            n.streak = 0;
        }
        n.last_advert = Some(now);
        n.priority = priority;
        n.interval = interval;
        let draining = priority == PRIORITY_STOP;
        let target = if draining {
            NodeState::Draining
        } else {
            NodeState::Up
        };
        let reason = match n.state {
            NodeState::Unknown => Some(Reason::FirstAdvert),
            NodeState::Up if draining => Some(Reason::PriorityZero),
            NodeState::Draining if !draining => Some(Reason::DrainEnded),
            NodeState::Up | NodeState::Draining => None,
            NodeState::Down => {
                n.streak += 1;
                (n.streak >= rise).then_some(Reason::Recovered { adverts: n.streak })
            }
        };
        if let Some(reason) = reason {
            n.state = target;
            n.streak = 0;
            out.push(if draining {
                HealthEvent::NodeDraining { node, reason }
            } else {
                HealthEvent::NodeUp { node, reason }
            });
        }
        for ev in out {
            self.record(ev);
        }
        Ok(())
    }

    /// [`HealthTracker::on_advert`] with an advert as parsed by haven-proto.
    pub fn on_vrrp(
        &mut self,
        now: Instant,
        node: NodeId,
        advert: &VrrpRepr,
    ) -> Result<(), HealthError> {
        self.on_advert(
            now,
            node,
            advert.priority,
            centiseconds(advert.max_advert_int_cs),
        )
    }

    /// Marks Down every node silent past its deadline at `now` and returns
    /// every transition queued since the last call, in order.
    pub fn poll(&mut self, now: Instant) -> Vec<HealthEvent> {
        let expired: Vec<HealthEvent> = self
            .nodes
            .iter_mut()
            .filter_map(|(&id, n)| expire(id, n, now))
            .collect();
        for ev in expired {
            self.record(ev);
        }
        self.events.drain(..).collect()
    }

    /// The earliest deadline at which [`HealthTracker::poll`] will mark a
    /// node Down.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter(|n| matches!(n.state, NodeState::Up | NodeState::Draining))
            .filter_map(Node::deadline)
            .min()
    }

    fn record(&mut self, ev: HealthEvent) {
        match ev {
            HealthEvent::NodeUp { .. } => self.stats.up += 1,
            HealthEvent::NodeDraining { .. } => self.stats.draining += 1,
            HealthEvent::NodeDown { .. } => self.stats.down += 1,
        }
        self.events.push_back(ev);
    }

    /// A node's state (`None` if not configured).
    pub fn state(&self, node: NodeId) -> Option<NodeState> {
        self.nodes.get(&node).map(|n| n.state)
    }

    /// The last priority a node advertised.
    pub fn priority(&self, node: NodeId) -> Option<u8> {
        self.nodes
            .get(&node)
            .filter(|n| n.last_advert.is_some())
            .map(|n| n.priority)
    }

    /// Nodes in `state`, sorted by id.
    pub fn nodes_in(&self, state: NodeState) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(move |(_, n)| n.state == state)
            .map(|(&id, _)| id)
    }

    /// The configured hysteresis.
    pub const fn rise(&self) -> u32 {
        self.rise
    }

    /// Counters.
    pub const fn stats(&self) -> HealthStats {
        self.stats
    }
}

/// Marks an Up or Draining node Down if its deadline has passed.
fn expire(id: NodeId, n: &mut Node, now: Instant) -> Option<HealthEvent> {
    if !matches!(n.state, NodeState::Up | NodeState::Draining) {
        return None;
    }
    let last = n.last_advert?;
    let down_interval = n.down_interval();
    let silent_for = now.checked_duration_since(last)?;
    if silent_for < down_interval {
        return None;
    }
    n.state = NodeState::Down;
    n.streak = 0;
    Some(HealthEvent::NodeDown {
        node: id,
        reason: Reason::Silent {
            silent_for,
            down_interval,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn tracker() -> (HealthTracker, Instant) {
        (
            HealthTracker::new([NodeId(1), NodeId(2)], DEFAULT_RISE),
            Instant::now(),
        )
    }

    #[test]
    fn first_advert_is_up_and_silence_is_down_at_the_rfc_interval() {
        let (mut h, t0) = tracker();
        assert_eq!(h.state(NodeId(1)), Some(NodeState::Unknown));
        h.on_advert(t0, NodeId(1), 100, SEC).expect("ok");
        assert_eq!(
            h.poll(t0),
            vec![HealthEvent::NodeUp {
                node: NodeId(1),
                reason: Reason::FirstAdvert
            }]
        );
        // [RFC 5798 § 6.1]: 3 × 1 s + (156 × 1 s) / 256 = 3.609375 s.
        let mdi = Duration::from_micros(3_609_375);
        assert_eq!(h.poll_timeout(), Some(t0 + mdi));
        assert!(h.poll(t0 + mdi - Duration::from_micros(1)).is_empty());
        assert_eq!(
            h.poll(t0 + mdi),
            vec![HealthEvent::NodeDown {
                node: NodeId(1),
                reason: Reason::Silent {
                    silent_for: mdi,
                    down_interval: mdi
                }
            }]
        );
        assert_eq!(h.state(NodeId(1)), Some(NodeState::Down));
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn regular_adverts_keep_a_node_up() {
        let (mut h, t0) = tracker();
        for i in 0..100u32 {
            h.on_advert(t0 + SEC * i, NodeId(2), 200, SEC).expect("ok");
            let evs = h.poll(t0 + SEC * i + SEC / 2);
            assert_eq!(evs.len(), usize::from(i == 0));
        }
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Up));
        // Priority 200 skews less: 3 s + 56/256 s.
        assert_eq!(
            h.poll_timeout(),
            Some(t0 + SEC * 99 + Duration::from_micros(3_218_750))
        );
    }

    #[test]
    fn down_node_needs_rise_consecutive_adverts() {
        let (mut h, t0) = tracker();
        h.on_advert(t0, NodeId(1), 100, SEC).expect("ok");
        let t = t0 + SEC * 10;
        h.poll(t);
        assert_eq!(h.state(NodeId(1)), Some(NodeState::Down));
        h.on_advert(t, NodeId(1), 100, SEC).expect("ok");
        h.on_advert(t + SEC, NodeId(1), 100, SEC).expect("ok");
        assert!(h.poll(t + SEC).is_empty());
        assert_eq!(h.state(NodeId(1)), Some(NodeState::Down));
        // A gap longer than the down interval breaks the streak.
        let t = t + SEC * 6;
        h.on_advert(t, NodeId(1), 100, SEC).expect("ok");
        h.on_advert(t + SEC, NodeId(1), 100, SEC).expect("ok");
        assert!(h.poll(t + SEC).is_empty());
        h.on_advert(t + SEC * 2, NodeId(1), 100, SEC).expect("ok");
        assert_eq!(
            h.poll(t + SEC * 2),
            vec![HealthEvent::NodeUp {
                node: NodeId(1),
                reason: Reason::Recovered { adverts: 3 }
            }]
        );
    }

    #[test]
    fn draining_and_back() {
        let (mut h, t0) = tracker();
        h.on_advert(t0, NodeId(1), 100, SEC).expect("ok");
        h.on_advert(t0 + SEC, NodeId(1), 0, SEC).expect("ok");
        h.on_advert(t0 + SEC * 2, NodeId(1), 0, SEC).expect("ok");
        h.on_advert(t0 + SEC * 3, NodeId(1), 50, SEC).expect("ok");
        assert_eq!(
            h.poll(t0 + SEC * 3),
            vec![
                HealthEvent::NodeUp {
                    node: NodeId(1),
                    reason: Reason::FirstAdvert
                },
                HealthEvent::NodeDraining {
                    node: NodeId(1),
                    reason: Reason::PriorityZero
                },
                HealthEvent::NodeUp {
                    node: NodeId(1),
                    reason: Reason::DrainEnded
                },
            ]
        );
        // A draining node that goes silent is Down (priority 0 skew = 1 interval).
        h.on_advert(t0 + SEC * 4, NodeId(1), 0, SEC).expect("ok");
        let evs = h.poll(t0 + SEC * 8);
        assert_eq!(evs.len(), 2);
        assert!(matches!(
            evs.get(1),
            Some(HealthEvent::NodeDown { reason: Reason::Silent { down_interval, .. }, .. })
                if *down_interval == SEC * 4
        ));
    }

    #[test]
    fn late_advert_first_marks_down() {
        let (mut h, t0) = tracker();
        h.on_advert(t0, NodeId(1), 100, SEC).expect("ok");
        h.poll(t0);
        // No poll in between: the late advert still reports the outage.
        h.on_advert(t0 + SEC * 20, NodeId(1), 100, SEC).expect("ok");
        let evs = h.poll(t0 + SEC * 20);
        assert!(matches!(evs.as_slice(), [HealthEvent::NodeDown { .. }]));
        assert_eq!(h.state(NodeId(1)), Some(NodeState::Down));
    }

    #[test]
    fn rejected_adverts_change_nothing() {
        let (mut h, t0) = tracker();
        assert_eq!(
            h.on_advert(t0, NodeId(9), 100, SEC),
            Err(HealthError::UnknownNode(NodeId(9)))
        );
        assert_eq!(
            h.on_advert(t0, NodeId(1), 100, Duration::ZERO),
            Err(HealthError::ZeroInterval)
        );
        assert!(h.poll(t0).is_empty());
        assert_eq!(h.state(NodeId(1)), Some(NodeState::Unknown));
        assert_eq!(h.stats().rejected, 2);
    }

    const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const KEY: [u8; 16] = *b"test-only-key-16";

    fn auth_advert(sequence: u64, key: &[u8]) -> Vec<u8> {
        AuthAdvertRepr {
            advert: VrrpRepr {
                vrid: 1,
                priority: 100,
                max_advert_int_cs: 100,
                addresses: vec![],
            },
            sequence,
        }
        .to_bytes(NODE_IP, ME, key)
        .expect("emit")
    }

    #[test]
    fn authenticated_adverts_in_order_are_accepted() {
        let mut a = AdvertAuth::new(Some(AdvertKey::new(KEY)));
        assert!(a.enabled());
        for seq in [5, 6, 100] {
            let r = a.check(NodeId(1), NODE_IP, ME, &auth_advert(seq, &KEY));
            assert_eq!(r.map(|r| r.priority), Ok(100), "seq {seq}");
        }
        // Sequences are per node.
        assert!(
            a.check(NodeId(2), NODE_IP, ME, &auth_advert(1, &KEY))
                .is_ok()
        );
    }

    #[test]
    fn replayed_and_old_sequences_are_refused() {
        let mut a = AdvertAuth::new(Some(AdvertKey::new(KEY)));
        let captured = auth_advert(7, &KEY);
        assert!(a.check(NodeId(1), NODE_IP, ME, &captured).is_ok());
        assert_eq!(
            a.check(NodeId(1), NODE_IP, ME, &captured),
            Err(AdvertRefusal::Replayed {
                sequence: 7,
                last: 7
            })
        );
        assert_eq!(
            a.check(NodeId(1), NODE_IP, ME, &auth_advert(6, &KEY))
                .map_err(|e| e.label()),
            Err("replayed")
        );
        assert!(
            a.check(NodeId(1), NODE_IP, ME, &auth_advert(8, &KEY))
                .is_ok()
        );
    }

    #[test]
    fn wrong_key_tampered_or_bare_adverts_are_unauthenticated() {
        let mut a = AdvertAuth::new(Some(AdvertKey::new(KEY)));
        let mut other = KEY;
        other[0] ^= 0x20;
        assert_eq!(
            a.check(NodeId(1), NODE_IP, ME, &auth_advert(1, &other)),
            Err(AdvertRefusal::Unauthenticated)
        );
        // A tampered priority with the checksum made right again.
        let mut b = auth_advert(2, &KEY);
        b[2] = 0;
        VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(NODE_IP, ME);
        assert_eq!(
            a.check(NodeId(1), NODE_IP, ME, &b),
            Err(AdvertRefusal::Unauthenticated)
        );
        // A tampered byte without: the checksum catches it first.
        let mut b = auth_advert(3, &KEY);
        b[20] ^= 1;
        assert!(matches!(
            a.check(NodeId(1), NODE_IP, ME, &b),
            Err(AdvertRefusal::Malformed(haven_proto::Error::Checksum))
        ));
        let bare = VrrpRepr {
            vrid: 1,
            priority: 100,
            max_advert_int_cs: 100,
            addresses: vec![],
        }
        .to_bytes(NODE_IP, ME)
        .expect("emit");
        assert_eq!(
            a.check(NodeId(1), NODE_IP, ME, &bare),
            Err(AdvertRefusal::Unauthenticated)
        );
        // Refusals record no sequence: a genuine advert 1 is still fresh.
        assert!(
            a.check(NodeId(1), NODE_IP, ME, &auth_advert(1, &KEY))
                .is_ok()
        );
    }

    #[test]
    fn without_a_key_plain_and_trailed_adverts_are_accepted() {
        let mut a = AdvertAuth::new(None);
        assert!(!a.enabled());
        let bare = VrrpRepr {
            vrid: 1,
            priority: 50,
            max_advert_int_cs: 100,
            addresses: vec![],
        }
        .to_bytes(NODE_IP, ME)
        .expect("emit");
        assert_eq!(
            a.check(NodeId(1), NODE_IP, ME, &bare).map(|r| r.priority),
            Ok(50)
        );
        let trailed = auth_advert(1, &KEY);
        assert!(a.check(NodeId(1), NODE_IP, ME, &trailed).is_ok());
        assert!(a.check(NodeId(1), NODE_IP, ME, &trailed).is_ok());
        // Sent to another address: the checksum (pseudo-header) fails.
        assert!(matches!(
            a.check(NodeId(1), NODE_IP, Ipv4Addr::new(198, 18, 0, 3), &bare),
            Err(AdvertRefusal::Malformed(haven_proto::Error::Checksum))
        ));
        assert_eq!(format!("{:?}", AdvertKey::new(KEY)), "AdvertKey(16 octets)");
    }

    #[test]
    fn vrrp_repr_interval_is_centiseconds() {
        let (mut h, t0) = tracker();
        let advert = VrrpRepr {
            vrid: 7,
            priority: 255,
            max_advert_int_cs: 20,
            addresses: vec![],
        };
        h.on_vrrp(t0, NodeId(2), &advert).expect("ok");
        // 3 × 200 ms + (1 × 200 ms) / 256.
        assert_eq!(
            h.poll_timeout(),
            Some(t0 + Duration::from_nanos(600_781_250))
        );
    }
}
