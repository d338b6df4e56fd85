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
//!
//! ## Withdrawals
//! A node whose Raft stream to a peer ends and whose immediate reconnect is
//! refused (the peer's host answers, its port is closed: the process is
//! gone) sends a withdrawal ([`haven_proto::withdraw`]) naming that peer.
//! [`HealthTracker::on_withdrawal`] takes an Up or Draining subject Down at
//! once (`Reason::Withdrawn`), exactly as if its Master_Down_Interval had
//! expired, so it needs `rise` adverts to come back. The reporter must be a
//! configured node, matched by source address as for adverts, and with a
//! key the withdrawal is authenticated like an advert and its sequence
//! checked against the same per-node replay state ([`AdvertAuth`]: one
//! rising sequence per reporter for both). A withdrawal about the reporter
//! itself, an unknown node, or a node not Up or Draining changes nothing.
//!
//! Anti-flap: a withdrawal is *disproved* when the subject's next advert
//! arrives within its Master_Down_Interval of the advert before the
//! withdrawal (it never fell silent: the report was wrong, e.g. a firewall
//! answering with a reset). Withdrawals about that node are then ignored
//! until it next falls silent for its Master_Down_Interval by the
//! dispatcher's own clock, so a wrong reporter bounces a live node at most
//! once (`rise` adverts of its flows on survivors, which hold every
//! binding) and the timeout still works as before (docs/dispatcher.md).

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use haven_proto::advert_auth::AuthAdvertRepr;
use haven_proto::vrrp::{PRIORITY_STOP, VrrpPacket, VrrpRepr};
use haven_proto::withdraw::WithdrawRepr;

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
    /// Node `by` reported the node's process gone (module docs,
    /// "Withdrawals").
    Withdrawn {
        /// The reporter.
        by: NodeId,
    },
}

/// What [`HealthTracker::on_withdrawal`] did with a withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawOutcome {
    /// The subject went Down.
    Accepted,
    /// Nothing changed.
    Ignored(WithdrawIgnored),
}

/// Why a withdrawal changed nothing (counted `ignored`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawIgnored {
    /// The reporter named itself.
    AboutSelf,
    /// The subject is not a configured node.
    UnknownSubject,
    /// The subject is not Up or Draining (never heard, or Down already).
    NotUp,
    /// A withdrawal of the subject was disproved and it has not fallen
    /// silent since (module docs, anti-flap).
    Disputed,
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
    /// Authentic, but not newer than the last advert (or withdrawal)
    /// accepted from that node.
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
        self.accept_sequence(node, a.sequence)?;
        Ok(a.advert)
    }

    /// Parses a withdrawal ([`haven_proto::withdraw`]) from `node` (the
    /// reporter, at `src`) to this dispatcher's `dst`; with a key, verifies
    /// the trailer and records its sequence in the same per-node replay
    /// state as the node's adverts (one rising sequence per sender).
    pub fn check_withdrawal(
        &mut self,
        node: NodeId,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        bytes: &[u8],
    ) -> Result<WithdrawRepr, AdvertRefusal> {
        let key = self.key.as_ref().map(AdvertKey::as_bytes);
        let w = match WithdrawRepr::parse(bytes, src, dst, key) {
            Ok(w) => w,
            Err(haven_proto::Error::Authentication) => return Err(AdvertRefusal::Unauthenticated),
            Err(e) => return Err(AdvertRefusal::Malformed(e)),
        };
        if self.key.is_some() {
            self.accept_sequence(node, w.sequence)?;
        }
        Ok(w)
    }

    fn accept_sequence(&mut self, node: NodeId, sequence: u64) -> Result<(), AdvertRefusal> {
        if let Some(&last) = self.last.get(&node)
            && sequence <= last
        {
            return Err(AdvertRefusal::Replayed { sequence, last });
        }
        self.last.insert(node, sequence);
        Ok(())
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
    /// Withdrawals that took their subject Down.
    pub withdrawals_accepted: u64,
    /// Withdrawals that changed nothing ([`WithdrawIgnored`]).
    pub withdrawals_ignored: u64,
    /// Withdrawn nodes that kept advertising (module docs, anti-flap).
    pub withdrawals_disproved: u64,
}

#[derive(Debug, Clone)]
struct Node {
    state: NodeState,
    last_advert: Option<Instant>,
    priority: u8,
    interval: Duration,
    /// Consecutive adverts while Down.
    streak: u32,
    /// Down by a withdrawal: the advert time before it, to tell at the
    /// next advert whether the node was ever silent.
    withdrawn_after: Option<Instant>,
    /// A withdrawal was disproved: ignore them until the node falls silent.
    disputed: bool,
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
                    withdrawn_after: None,
                    disputed: false,
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
            // down interval breaks it. The node was silent that long by our
            // own clock, so reports about it are trusted again.
            n.streak = 0;
            n.disputed = false;
        }
        if let Some(before) = n.withdrawn_after.take()
            && now.saturating_duration_since(before) < n.down_interval()
        {
            // Never silent across the withdrawal: it was wrong.
            n.disputed = true;
            self.stats.withdrawals_disproved += 1;
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

    /// A withdrawal of `subject` reported by `by` (authenticated and
    /// replay-checked by the caller, [`AdvertAuth::check_withdrawal`]). An
    /// Up or Draining subject goes Down now with `Reason::Withdrawn`;
    /// `UnknownNode` if the reporter is not configured (module docs).
    pub fn on_withdrawal(
        &mut self,
        now: Instant,
        by: NodeId,
        subject: NodeId,
    ) -> Result<WithdrawOutcome, HealthError> {
        if !self.nodes.contains_key(&by) {
            self.stats.rejected += 1;
            return Err(HealthError::UnknownNode(by));
        }
        let outcome = self.withdraw(now, by, subject);
        match outcome {
            WithdrawOutcome::Accepted => self.stats.withdrawals_accepted += 1,
            WithdrawOutcome::Ignored(_) => self.stats.withdrawals_ignored += 1,
        }
        Ok(outcome)
    }

    fn withdraw(&mut self, now: Instant, by: NodeId, subject: NodeId) -> WithdrawOutcome {
        if by == subject {
            return WithdrawOutcome::Ignored(WithdrawIgnored::AboutSelf);
        }
        let Some(n) = self.nodes.get_mut(&subject) else {
            return WithdrawOutcome::Ignored(WithdrawIgnored::UnknownSubject);
        };
        // Already past its deadline: Down by silence, as a poll would say.
        if let Some(ev) = expire(subject, n, now) {
            self.record(ev);
            return WithdrawOutcome::Ignored(WithdrawIgnored::NotUp);
        }
        if !matches!(n.state, NodeState::Up | NodeState::Draining) {
            return WithdrawOutcome::Ignored(WithdrawIgnored::NotUp);
        }
        if n.disputed {
            return WithdrawOutcome::Ignored(WithdrawIgnored::Disputed);
        }
        n.state = NodeState::Down;
        n.streak = 0;
        n.withdrawn_after = n.last_advert;
        self.record(HealthEvent::NodeDown {
            node: subject,
            reason: Reason::Withdrawn { by },
        });
        WithdrawOutcome::Accepted
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
    // The dispatcher's own clock agrees the node was gone: reports about
    // it are trusted again (module docs, anti-flap).
    n.disputed = false;
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

    const MS100: Duration = Duration::from_millis(100);

    /// Nodes 1–3 Up, advertising every 100 ms since `t0`, last at `t0`.
    fn three_up() -> (HealthTracker, Instant) {
        let mut h = HealthTracker::new([NodeId(1), NodeId(2), NodeId(3)], DEFAULT_RISE);
        let t0 = Instant::now();
        for i in 1..=3 {
            h.on_advert(t0, NodeId(i), 100, MS100).expect("ok");
        }
        assert_eq!(h.poll(t0).len(), 3);
        (h, t0)
    }

    #[test]
    fn withdrawal_takes_an_up_node_down_at_once_and_rise_brings_it_back() {
        let (mut h, t0) = three_up();
        let t = t0 + Duration::from_millis(5);
        assert_eq!(
            h.on_withdrawal(t, NodeId(1), NodeId(2)),
            Ok(WithdrawOutcome::Accepted)
        );
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Down));
        assert_eq!(
            h.poll(t),
            vec![HealthEvent::NodeDown {
                node: NodeId(2),
                reason: Reason::Withdrawn { by: NodeId(1) }
            }]
        );
        // Down now, 5 ms after its last advert, not at its
        // Master_Down_Interval (360.9 ms [RFC 5798 § 6.1]), which then
        // reports nothing more about it.
        assert_eq!(
            h.poll_timeout(),
            Some(t0 + Duration::from_nanos(360_937_500)),
            "nodes 1 and 3"
        );
        h.on_advert(t0 + MS100, NodeId(1), 100, MS100).expect("ok");
        h.on_advert(t0 + MS100, NodeId(3), 100, MS100).expect("ok");
        assert!(h.poll(t0 + Duration::from_millis(400)).is_empty());
        assert_eq!(
            h.nodes_in(NodeState::Up).collect::<Vec<_>>(),
            [NodeId(1), NodeId(3)]
        );
        // Back after a gap (a restart): `rise` adverts, as after a silence,
        // and the withdrawal is not held against it.
        let back = t0 + SEC * 5;
        for k in 0..2u32 {
            h.on_advert(back + MS100 * k, NodeId(2), 100, MS100)
                .expect("ok");
        }
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Down));
        h.on_advert(back + MS100 * 2, NodeId(2), 100, MS100)
            .expect("ok");
        // (Nodes 1 and 3 fell silent meanwhile: the reporter's own health
        // does not matter, its authenticity does.)
        assert!(h.poll(back + MS100 * 2).contains(&HealthEvent::NodeUp {
            node: NodeId(2),
            reason: Reason::Recovered { adverts: 3 }
        }));
        assert_eq!(h.stats().withdrawals_disproved, 0);
        assert_eq!(
            h.on_withdrawal(back + MS100 * 2, NodeId(3), NodeId(2)),
            Ok(WithdrawOutcome::Accepted),
            "a restarted node can be withdrawn again"
        );
        assert_eq!(h.stats().withdrawals_accepted, 2);
    }

    #[test]
    fn withdrawal_of_a_draining_node() {
        let (mut h, t0) = three_up();
        h.on_advert(t0 + MS100, NodeId(2), 0, MS100).expect("ok");
        h.poll(t0 + MS100);
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Draining));
        assert_eq!(
            h.on_withdrawal(t0 + MS100, NodeId(1), NodeId(2)),
            Ok(WithdrawOutcome::Accepted)
        );
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Down));
    }

    #[test]
    fn withdrawals_about_self_unknown_or_down_nodes_are_ignored() {
        let (mut h, t0) = three_up();
        let ignored = |w| Ok(WithdrawOutcome::Ignored(w));
        assert_eq!(
            h.on_withdrawal(t0, NodeId(1), NodeId(1)),
            ignored(WithdrawIgnored::AboutSelf)
        );
        assert_eq!(
            h.on_withdrawal(t0, NodeId(1), NodeId(9)),
            ignored(WithdrawIgnored::UnknownSubject)
        );
        // From an unconfigured reporter: refused.
        assert_eq!(
            h.on_withdrawal(t0, NodeId(9), NodeId(2)),
            Err(HealthError::UnknownNode(NodeId(9)))
        );
        assert!(h.poll(t0).is_empty());
        assert_eq!(h.nodes_in(NodeState::Up).count(), 3);
        // Down already: nothing more; a node never heard from: nothing.
        h.on_withdrawal(t0, NodeId(1), NodeId(2)).expect("ok");
        assert_eq!(
            h.on_withdrawal(t0, NodeId(3), NodeId(2)),
            ignored(WithdrawIgnored::NotUp)
        );
        let mut fresh = HealthTracker::new([NodeId(1), NodeId(2)], DEFAULT_RISE);
        fresh.on_advert(t0, NodeId(1), 100, MS100).expect("ok");
        assert_eq!(
            fresh.on_withdrawal(t0, NodeId(1), NodeId(2)),
            ignored(WithdrawIgnored::NotUp)
        );
        assert_eq!(fresh.state(NodeId(2)), Some(NodeState::Unknown));
        // Past its deadline: Down by silence (the reason the dispatcher
        // itself can vouch for), not by the report.
        let late = t0 + SEC;
        assert_eq!(
            h.on_withdrawal(late, NodeId(1), NodeId(3)),
            ignored(WithdrawIgnored::NotUp)
        );
        assert!(h.poll(late).iter().any(|e| matches!(
            e,
            HealthEvent::NodeDown {
                node: NodeId(3),
                reason: Reason::Silent { .. }
            }
        )));
        assert_eq!(h.stats().withdrawals_ignored, 4);
        assert_eq!(h.stats().rejected, 1);
    }

    #[test]
    fn a_disproved_withdrawal_is_not_repeated_until_the_node_falls_silent() {
        // Node 2 is alive and keeps advertising every 100 ms; node 1 keeps
        // reporting it gone (a reset from a firewall looks like a refusal).
        let (mut h, t0) = three_up();
        let at = |k: u32| t0 + MS100 * k;
        h.on_withdrawal(at(0) + MS100 / 2, NodeId(1), NodeId(2))
            .expect("ok");
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Down));
        // Its adverts never stopped: rise of them bring it back, and the
        // first one disproves the withdrawal.
        for k in 1..=3 {
            h.on_advert(at(k), NodeId(2), 100, MS100).expect("ok");
            h.on_advert(at(k), NodeId(1), 100, MS100).expect("ok");
        }
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Up));
        assert_eq!(h.stats().withdrawals_disproved, 1);
        // Further reports about it bounce nothing.
        for k in 4..=10 {
            assert_eq!(
                h.on_withdrawal(at(k), NodeId(1), NodeId(2)),
                Ok(WithdrawOutcome::Ignored(WithdrawIgnored::Disputed))
            );
            h.on_advert(at(k), NodeId(2), 100, MS100).expect("ok");
            h.on_advert(at(k), NodeId(1), 100, MS100).expect("ok");
            assert_eq!(h.state(NodeId(2)), Some(NodeState::Up));
        }
        // It really dies: the timeout works as without withdrawals, and
        // after that silence reports about it count again.
        let evs = h.poll(at(15));
        assert!(evs.iter().any(|e| matches!(
            e,
            HealthEvent::NodeDown {
                node: NodeId(2),
                reason: Reason::Silent { .. }
            }
        )));
        let back = at(30);
        for k in 0..3 {
            h.on_advert(back + MS100 * k, NodeId(2), 100, MS100)
                .expect("ok");
            h.on_advert(back + MS100 * k, NodeId(1), 100, MS100)
                .expect("ok");
        }
        assert_eq!(h.state(NodeId(2)), Some(NodeState::Up));
        assert_eq!(
            h.on_withdrawal(back + MS100 * 2, NodeId(1), NodeId(2)),
            Ok(WithdrawOutcome::Accepted)
        );
    }

    fn withdrawal(sequence: u64, key: Option<&[u8]>) -> Vec<u8> {
        WithdrawRepr {
            vrid: 1,
            subject: Ipv4Addr::new(198, 18, 0, 12),
            sequence,
        }
        .to_bytes(NODE_IP, ME, key)
        .expect("emit")
    }

    #[test]
    fn withdrawals_share_the_reporters_advert_sequence() {
        let mut a = AdvertAuth::new(Some(AdvertKey::new(KEY)));
        assert!(
            a.check(NodeId(1), NODE_IP, ME, &auth_advert(10, &KEY))
                .is_ok()
        );
        let w = a
            .check_withdrawal(NodeId(1), NODE_IP, ME, &withdrawal(11, Some(&KEY)))
            .expect("authentic and newer");
        assert_eq!((w.subject, w.sequence), (Ipv4Addr::new(198, 18, 0, 12), 11));
        // Replayed, or older than the last advert: refused.
        assert_eq!(
            a.check_withdrawal(NodeId(1), NODE_IP, ME, &withdrawal(11, Some(&KEY))),
            Err(AdvertRefusal::Replayed {
                sequence: 11,
                last: 11
            })
        );
        assert!(
            a.check(NodeId(1), NODE_IP, ME, &auth_advert(12, &KEY))
                .is_ok()
        );
        assert_eq!(
            a.check_withdrawal(NodeId(1), NODE_IP, ME, &withdrawal(12, Some(&KEY)))
                .map_err(|e| e.label()),
            Err("replayed")
        );
        // The withdrawal moved the advert sequence on too.
        assert!(
            a.check_withdrawal(NodeId(1), NODE_IP, ME, &withdrawal(20, Some(&KEY)))
                .is_ok()
        );
        assert!(
            a.check(NodeId(1), NODE_IP, ME, &auth_advert(19, &KEY))
                .is_err()
        );
    }

    #[test]
    fn unauthenticated_or_malformed_withdrawals_are_refused() {
        let mut a = AdvertAuth::new(Some(AdvertKey::new(KEY)));
        let mut other = KEY;
        other[1] ^= 4;
        for bytes in [withdrawal(5, None), withdrawal(5, Some(&other))] {
            assert_eq!(
                a.check_withdrawal(NodeId(1), NODE_IP, ME, &bytes),
                Err(AdvertRefusal::Unauthenticated)
            );
        }
        // From another source (a spoofer who is not node 1's address):
        // the pseudo-header checksum fails.
        assert!(matches!(
            a.check_withdrawal(
                NodeId(1),
                Ipv4Addr::new(198, 18, 0, 66),
                ME,
                &withdrawal(6, Some(&KEY))
            ),
            Err(AdvertRefusal::Malformed(haven_proto::Error::Checksum))
        ));
        // An advert is not a withdrawal, nor the reverse.
        assert!(matches!(
            a.check_withdrawal(NodeId(1), NODE_IP, ME, &auth_advert(7, &KEY)),
            Err(AdvertRefusal::Malformed(
                haven_proto::Error::UnexpectedType(1)
            ))
        ));
        assert!(matches!(
            a.check(NodeId(1), NODE_IP, ME, &withdrawal(8, Some(&KEY))),
            Err(AdvertRefusal::Malformed(
                haven_proto::Error::UnexpectedType(6)
            ))
        ));
        // Refusals record no sequence.
        assert!(
            a.check_withdrawal(NodeId(1), NODE_IP, ME, &withdrawal(1, Some(&KEY)))
                .is_ok()
        );
        // Without a key: plain and keyed ones parse, no replay state.
        let mut plain = AdvertAuth::new(None);
        for _ in 0..2 {
            assert!(
                plain
                    .check_withdrawal(NodeId(1), NODE_IP, ME, &withdrawal(0, None))
                    .is_ok()
            );
            assert!(
                plain
                    .check_withdrawal(NodeId(1), NODE_IP, ME, &withdrawal(3, Some(&KEY)))
                    .is_ok()
            );
        }
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
