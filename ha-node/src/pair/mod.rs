//! Pair-mode replication ([DESIGN.md § 4], "pair"): two home agents, a
//! primary and a secondary, after seed 002 figure 13a — a *data dump* when
//! the secondary boots, a *data forward* for every registration, VRRP
//! advertisements to tell the secondary when the primary died.
//!
//! * [`core`] — [`PairReplicator`], sans-IO: `handle_datagram(now, src,
//!   bytes)`, `handle_timeout(now)`, `poll_timeout()`, `poll_transmit()`,
//!   plus the [`Replicator`](crate::replicate::Replicator) seam the engine
//!   talks to.
//!
//! # Protocol
//!
//! Messages are the `haven_proto::sync` messages (`docs/wire-sync.md`)
//! exchanged between the two nodes' *unique* addresses, each with the
//! HMAC-SHA256 trailer; the HMAC and checksum pseudo-header use the two
//! IPv4 addresses. They travel as UDP payloads (`[cluster] listen`/`peer`,
//! port 4342 by convention) rather than raw IP protocol 112: the receiver is
//! a user-space daemon either way, and UDP needs no `CAP_NET_RAW`.
//!
//! * **Authenticated advertisements.** Every advertisement interval each
//!   node sends the peer a VRRPv3 advertisement [RFC 5798 § 5.2] (type 1,
//!   its priority, its interval, the VIPs) followed by the 22-octet sync
//!   header and the HMAC trailer, sealed with `sync::seal`. A bare
//!   RFC 5798 advert would let anyone on the backend network keep a dead
//!   primary "alive" or make a live one step down, so a pair never acts on
//!   one: `VrrpRepr::parse` reads the header (it ignores the octets after
//!   the addresses), `SyncPacket::verify_mac` checks the trailer, the
//!   sequence number goes through the same [`ReplayWindow`] as every other
//!   message. In the sync header of an advertisement, flags bit 0x40
//!   ([`FLAG_PRIMARY`]) says "I am primary", 0x20 ([`FLAG_SYNCED`]) "I am a
//!   secondary with a complete copy" or "a confirmed primary" (below), and
//!   the Acknowledged Sequence slot
//!   carries a log index (below). Unlike plain VRRP the secondary
//!   advertises too: the primary needs to know its copy is alive.
//! * **Roles** [RFC 5798 § 6.4]. A node boots as an unsynced secondary and
//!   becomes primary when no primary advertises for Master_Down_Interval =
//!   3 × interval + Skew_Time, Skew_Time = (256 − priority) × interval / 256
//!   (the peer's advertised interval; a priority-0 advert from a leaving
//!   primary shortens the wait to Skew_Time). No preemption: a returning
//!   node that hears a primary stays secondary whatever its priority. Two
//!   primaries (both booted at once, or a healed partition) resolve on the
//!   first advert either receives: the lower (confirmed, priority,
//!   address) steps down, discards its uncommitted proposals and re-dumps.
//!   *Confirmed* (flag 0x20 on a primary's advert) means its state holds
//!   every synchronously acknowledged entry: it took over while synced, or
//!   a secondary has acknowledged from it since. Without it, a node that
//!   restarts into a partition, takes over with an empty table and meets
//!   the real primary after the heal could win on priority and make it
//!   re-dump an empty table (found by the simulation). The other
//!   answers a conflicting advert at once, so the overlap lasts about one
//!   one-way delay.
//! * **Dump.** An unsynced secondary sends a Data Dump Request (retried
//!   every 2 intervals, and at once when a new primary appears). The
//!   primary answers with `index:u64 ‖ StateMachine::snapshot()` cut into
//!   records and `split_records` messages of at most `max_datagram` octets;
//!   every fragment's Acknowledged Sequence names the request, so a stale
//!   dump is never restored. The secondary collects fragments by index
//!   (reordering is harmless; the strict `Reassembler` would make it
//!   re-request), `restore`s, and acks the last fragment.
//! * **Forward.** Each proposal on the primary gets the next log index; a
//!   Data Forward carries one or more records `index:u64 ‖
//!   Command::encode()`. The secondary applies them strictly in index
//!   order (duplicates skipped, a forward that overtook an earlier one is
//!   held back, up to 64) and acks the message's sequence number; the
//!   primary maps that to the highest index the message held and applies
//!   up to it — **synchronous replication**: the engine sees the command in
//!   `poll_applied`, and sends the Registration Reply, only after both
//!   nodes hold it. Unacked entries are re-sent every `retransmit` from the
//!   secondary's acknowledged index. Each transmission has its own wire
//!   sequence number (the wire format never reuses one), so the log index
//!   travels in the record, not in the header.
//! * **Degraded.** If the secondary is silent for Master_Down_Interval, or
//!   an entry stays unacknowledged for `forward_timeout` (default: the same
//!   interval), the primary applies everything pending and, from then on,
//!   each proposal at once ([`Replication::Degraded`], counted in
//!   [`PairStats::degraded_applies`]). This is what a pair must do to stay
//!   available when its partner dies; the price is that such bindings live
//!   on one node until the secondary catches up (a second failure in that
//!   window loses them, and in a partition both sides may serve; the side
//!   that steps down loses its degraded bindings — the mobile nodes
//!   re-register within a lifetime). A node that takes over starts
//!   degraded for the same reason. The primary keeps up to `max_log`
//!   entries the secondary has not acked and forwards them when it is back;
//!   it is synchronous again once the secondary has acked (or advertises,
//!   synced) everything it applied. Its adverts carry its *log floor*, the
//!   highest index it can no longer forward; a synced secondary below it
//!   has a gap only a dump closes, and asks for one.
//!
//! Crash semantics: state is volatile (the seed's design). One node may
//! fail at any time without losing an acknowledged binding, provided the
//! other held a complete copy ([`PairReplicator::is_synced`]); losing both
//! loses the table, and mobile nodes re-register.
//!
//! Known limit: a freshly booted node's replay window is empty, so an
//! attacker who recorded authentic traffic can replay it to a node once
//! after its restart. Dumps are bound to the request's fresh sequence
//! number and forwards are ignored until a dump completes, so this cannot
//! change the table; at worst replayed adverts delay the restarted node's
//! takeover while the peer is actually dead.
//!
//! # Dispatcher in pair mode
//!
//! Only the primary accepts proposals (`propose` on a secondary returns
//! `Err(ProposeError::Unavailable)`, so the engine never acknowledges
//! there). The dispatcher must steer every registration to the primary:
//! the secondary keeps sending its health advertisements to the dispatcher
//! with priority 0 (draining), the primary with its capacity; after a
//! takeover the daemon flips them (`take_role_change`).
//!
//! # Configuration (proposed `[cluster]` section)
//!
//! ```toml
//! [cluster]
//! mode = "pair"
//! listen = "198.18.0.11:4342"     # this node's unique address (UDP)
//! peer = "198.18.0.12:4342"       # the other node's unique address
//! vrid = 1
//! priority = 100                  # 1..=254; higher wins a dual-primary tie
//! advert_interval_cs = 100        # RFC 5798 default: Master_Down ≈ 3.6 s
//! key_hex = "…"                   # HMAC-SHA256 key, ≥ 16 octets, same on both
//! forward_retransmit_ms = 20      # re-send unacked forwards
//! forward_timeout_ms = 0          # 0 = Master_Down_Interval, then degraded
//! max_datagram = 1400             # dump/forward message size
//! max_log = 65536                 # entries kept for a lagging secondary
//! ```
//!
//! VIPs: the realms' home-agent addresses.
//!
//! # Wiring in the daemon
//!
//! ```text
//! let cfg = PairConfig { local, peer, vrid, priority, advert_interval_cs,
//!     key, vips, retransmit, forward_timeout, max_datagram, max_log,
//!     initial_sequence: unix_time_micros << 10 };  // > any earlier boot's
//! cfg.validate()?;                                  // exit 64 on error
//! let mut pair = PairReplicator::new(cfg, StateMachine::from_config(&c), now);
//! let sock = UdpSocket::bind(listen);
//! loop {
//!     select! {
//!         r = sock.recv_from(&mut buf) => pair.handle_datagram(now, src_v4, &buf[..n]),
//!         _ = sleep_until(pair.poll_timeout()) => pair.handle_timeout(now),
//!         cmd = engine_proposals => {
//!             pair.handle_timeout(now);          // propose() uses the last `now`
//!             if pair.propose(id, cmd).is_err() { engine.proposal_failed(id) }
//!         }
//!     }
//!     while let Some((to, b)) = pair.poll_transmit() { sock.send_to(&b, to) }
//!     while let Some(a) = pair.poll_applied() { engine.handle_applied(now, &a) }
//!     if pair.take_restored() { /* a dump replaced the state: log it */ }
//!     if pair.take_role_change() {
//!         engine.set_propose_expiries(pair.role() == Role::Primary);
//!         // dispatcher health advert priority: capacity on primary, 0 on secondary
//!     }
//!     metrics from pair.stats()              // haven_pair_* (PairStats)
//! }
//! on SIGTERM: pair.shutdown(); flush poll_transmit; exit.
//! ```
//!
//! [`ReplayWindow`]: haven_proto::sync::ReplayWindow

pub mod core;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub use self::core::{FLAG_PRIMARY, FLAG_SYNCED, PairReplicator, PairStats, Replication, Role};

/// Smallest HMAC key accepted (octets).
pub const MIN_KEY_LEN: usize = 16;
/// Smallest `max_datagram`: one forward record with the headers.
pub const MIN_DATAGRAM: usize = 256;

/// A centisecond count as a [`Duration`].
pub fn centiseconds(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

/// Skew_Time = ((256 − Priority) × Master_Adver_Interval) / 256
/// [RFC 5798 § 6.1].
pub fn skew_time(priority: u8, interval: Duration) -> Duration {
    interval * (256 - u32::from(priority)) / 256
}

/// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time
/// [RFC 5798 § 6.1].
pub fn master_down_interval(priority: u8, interval: Duration) -> Duration {
    interval * 3 + skew_time(priority, interval)
}

/// The pair replicator's settings (see the module docs for the TOML).
#[derive(Clone, PartialEq, Eq)]
pub struct PairConfig {
    /// This node's unique address: the socket it sends from and receives on.
    pub local: SocketAddrV4,
    /// The peer's unique address; datagrams from any other IPv4 source are
    /// dropped.
    pub peer: SocketAddrV4,
    /// Virtual router id of the virtual home agent.
    pub vrid: u8,
    /// VRRP priority, 1..=254 (0 means "leaving", 255 "owner" — neither
    /// fits a pair without preemption).
    pub priority: u8,
    /// Advertisement interval in centiseconds, 1..=4095 [RFC 5798 § 5.2.7].
    pub advert_interval_cs: u16,
    /// HMAC-SHA256 key shared by both nodes.
    pub key: Vec<u8>,
    /// Virtual addresses listed in every message (the home-agent VIPs).
    pub vips: Vec<Ipv4Addr>,
    /// Retransmission interval for unacknowledged forwards.
    pub retransmit: Duration,
    /// How long a forward may stay unacknowledged before the primary goes
    /// on alone; `None` = Master_Down_Interval.
    pub forward_timeout: Option<Duration>,
    /// Largest sync message in octets.
    pub max_datagram: usize,
    /// Forward log entries kept for a secondary that has not acked them.
    pub max_log: usize,
    /// First sequence number of this boot: must exceed every number the
    /// previous boot sent (e.g. Unix time in µs × 1024), or the peer's
    /// replay window drops this node's messages until it catches up.
    pub initial_sequence: u64,
}

impl std::fmt::Debug for PairConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("PairConfig")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("vrid", &self.vrid)
            .field("priority", &self.priority)
            .field("advert_interval_cs", &self.advert_interval_cs)
            .field("vips", &self.vips)
            .field("retransmit", &self.retransmit)
            .field("forward_timeout", &self.forward_timeout)
            .field("max_datagram", &self.max_datagram)
            .field("max_log", &self.max_log)
            .finish_non_exhaustive()
    }
}

/// Why a [`PairConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairConfigError {
    /// Priority outside 1..=254.
    #[error("priority must be 1..=254, got {0}")]
    Priority(u8),
    /// Interval outside 1..=4095 centiseconds.
    #[error("advert_interval_cs must be 1..=4095, got {0}")]
    Interval(u16),
    /// Key shorter than [`MIN_KEY_LEN`].
    #[error("key must be at least {MIN_KEY_LEN} octets, got {0}")]
    Key(usize),
    /// The peer is this node.
    #[error("peer address equals the local address")]
    SamePeer,
    /// More than 255 VIPs.
    #[error("at most 255 virtual addresses, got {0}")]
    Vips(usize),
    /// `max_datagram` outside [`MIN_DATAGRAM`]..=65515.
    #[error("max_datagram must be {MIN_DATAGRAM}..=65515, got {0}")]
    Datagram(usize),
    /// A zero retransmission interval.
    #[error("retransmit interval must be positive")]
    Retransmit,
}

impl PairConfig {
    /// Checks every field (raft-rs `Config::validate` style).
    pub fn validate(&self) -> Result<(), PairConfigError> {
        if !(1..=254).contains(&self.priority) {
            return Err(PairConfigError::Priority(self.priority));
        }
        if !(1..=0x0fff).contains(&self.advert_interval_cs) {
            return Err(PairConfigError::Interval(self.advert_interval_cs));
        }
        if self.key.len() < MIN_KEY_LEN {
            return Err(PairConfigError::Key(self.key.len()));
        }
        if self.local.ip() == self.peer.ip() {
            return Err(PairConfigError::SamePeer);
        }
        if self.vips.len() > 255 {
            return Err(PairConfigError::Vips(self.vips.len()));
        }
        if !(MIN_DATAGRAM..=haven_proto::sync::MAX_MESSAGE_LEN).contains(&self.max_datagram)
            || self.max_datagram < MIN_DATAGRAM + 4 * self.vips.len()
        {
            return Err(PairConfigError::Datagram(self.max_datagram));
        }
        if self.retransmit.is_zero() {
            return Err(PairConfigError::Retransmit);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
