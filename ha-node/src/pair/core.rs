//! The sans-IO pair replicator: roles, data dump, data forward, acks.
//!
//! See the [module docs](super) for the protocol, the choices and the
//! driver contract. Nothing here reads a clock or touches a socket: time
//! comes in as `now` (the same monotonic [`Duration`] the engine gets),
//! datagrams come in through [`PairReplicator::handle_datagram`] and leave
//! through [`PairReplicator::poll_transmit`].

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use haven_proto::Error as WireError;
use haven_proto::sync::{
    self, BLOCK_HEADER_LEN, DataBlock, MAC_LEN, ReplayWindow, SYNC_HEADER_LEN, Subtype, SyncPacket,
    SyncRepr, SyncType, split_records,
};
use haven_proto::vrrp::{self, PRIORITY_STOP, VrrpPacket, VrrpRepr};

use super::{PairConfig, centiseconds, master_down_interval, skew_time};
use crate::command::{Command, StateMachine};
use crate::replicate::{Applied, ProposeError, Replicator, RequestId};

/// Advertisement flag (octet 18 of the sync header in an authenticated
/// advertisement): the sender is the primary.
pub const FLAG_PRIMARY: u8 = 0x40;
/// Advertisement flag: the sender (a secondary) holds a complete dump.
pub const FLAG_SYNCED: u8 = 0x20;
/// Forward messages sent at once from one starting index (the rest follow
/// after the acks or the next retransmission).
const FORWARD_BURST: usize = 8;
/// Out-of-order forwards a secondary keeps while waiting for the gap.
const REORDER_BUFFER: usize = 64;
/// Forward transmissions remembered for matching acks.
const SENT_MEMORY: usize = 1024;

/// Which side of the pair this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serves registrations; forwards every command to the secondary.
    Primary,
    /// Holds a copy; refuses proposals; takes over when the primary's
    /// advertisements stop for Master_Down_Interval.
    Secondary,
}

impl Role {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// How an applied command was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replication {
    /// The secondary acknowledged it before it was applied here (or, on
    /// the secondary, it came from the primary).
    Synchronous,
    /// Applied by a primary whose secondary was silent or not acknowledging
    /// past the forward timeout: only this node holds it.
    Degraded,
}

/// Counters for metrics (`haven_pair_*`). Plain numbers, never reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairStats {
    /// Current role.
    pub role: Role,
    /// This node's state is a complete copy (always true on a primary).
    pub synced: bool,
    /// Primary applying without acknowledgements.
    pub degraded: bool,
    /// Highest log index applied here.
    pub applied_index: u64,
    /// Data Forward messages sent (retransmissions included).
    pub forwards_sent: u64,
    /// Data Forward retransmissions.
    pub forward_retransmits: u64,
    /// Acks received that advanced the secondary's acknowledged index.
    pub acks_received: u64,
    /// Acks sent (secondary).
    pub acks_sent: u64,
    /// Commands committed after the secondary's ack.
    pub synchronous_applies: u64,
    /// Commands committed without an ack (degraded primary).
    pub degraded_applies: u64,
    /// Sum of proposal-to-apply latency of synchronous applies.
    pub forward_latency_total: Duration,
    /// Largest proposal-to-apply latency seen.
    pub forward_latency_max: Duration,
    /// Dumps sent (primary).
    pub dumps_sent: u64,
    /// Dumps received and restored (secondary).
    pub dumps_received: u64,
    /// Data Dump Requests sent.
    pub dump_requests_sent: u64,
    /// Dumps that did not restore (bad records): re-requested.
    pub dump_failures: u64,
    /// Advertisements sent / accepted.
    pub adverts_sent: u64,
    /// Authenticated advertisements from the peer.
    pub adverts_received: u64,
    /// Datagrams without a valid HMAC trailer (dropped).
    pub auth_failures: u64,
    /// Authenticated but replayed or too old (dropped).
    pub replays: u64,
    /// Undecodable datagrams, wrong VRID, or from another address (dropped).
    pub malformed: u64,
    /// Authenticated messages that did not fit the current role (dropped).
    pub ignored: u64,
    /// Forward entries that did not decode (should stay 0).
    pub bad_entries: u64,
    /// Secondary → primary transitions.
    pub takeovers: u64,
    /// Takeovers by a secondary that had no complete dump.
    pub unsynced_takeovers: u64,
    /// Primary → secondary transitions (two primaries met).
    pub step_downs: u64,
    /// Times the primary entered degraded mode.
    pub degraded_entries: u64,
}

/// One log entry on the primary.
#[derive(Debug, Clone)]
struct Entry {
    index: u64,
    command: Command,
    /// The forward record: index:u64 ‖ `Command::encode()`.
    record: Vec<u8>,
    request: Option<RequestId>,
    proposed_at: Duration,
}

/// A dump being received: fragments by index.
#[derive(Debug, Default)]
struct DumpRx {
    /// The sequence number of our Data Dump Request it answers.
    request_seq: u64,
    requested_at: Duration,
    fragments: BTreeMap<u16, Vec<Vec<u8>>>,
    /// Index of the fragment with M clear, once seen.
    last: Option<u16>,
    last_seq: u64,
}

/// The pair replicator (see the module docs).
#[derive(Debug)]
pub struct PairReplicator {
    cfg: PairConfig,
    state: StateMachine,
    role: Role,
    now: Duration,
    next_seq: u64,
    window: ReplayWindow,
    transmit: VecDeque<Vec<u8>>,
    applied: VecDeque<(Applied, Replication)>,
    restored: bool,
    role_changed: bool,
    stats: PairStats,

    // Election [RFC 5798 § 6.4].
    next_advert: Duration,
    /// Secondary: when the primary is declared down.
    master_down_at: Duration,
    peer_interval: Duration,
    peer_primary: bool,
    last_heard: Option<Duration>,

    // Primary.
    /// Highest index applied here (both roles).
    applied_index: u64,
    /// Highest index assigned (primary).
    next_index: u64,
    /// Highest index the current secondary acknowledged.
    peer_acked: u64,
    log: VecDeque<Entry>,
    /// Highest index sent in a forward since the last retransmission point.
    sent_index: u64,
    /// Forward (and last dump fragment) sequence → highest index it held.
    sent: BTreeMap<u64, u64>,
    next_retransmit: Option<Duration>,
    degraded: bool,
    /// Primary: this state holds every synchronously acknowledged entry of
    /// the pair's history (it took over synced, or a secondary has acked
    /// from it since). Decides a dual-primary conflict before priority.
    confirmed: bool,
    /// Primary: the secondary can take forwards (it is synced, as far as
    /// its last advert, ack or dump request says). No forwards otherwise:
    /// an unsynced secondary drops them, a dead one never sees them.
    peer_ready: bool,

    // Secondary.
    synced: bool,
    dump: Option<DumpRx>,
    /// Out-of-order forwards: first index → (sequence, entries).
    reorder: BTreeMap<u64, (u64, Vec<(u64, Command)>)>,
}

impl PairReplicator {
    /// A node booting at `now` with `state` (usually empty). It starts as
    /// an unsynced secondary: it asks the peer for a dump and becomes
    /// primary only if no primary advertises within Master_Down_Interval
    /// [RFC 5798 § 6.4.1]. The configuration must have passed
    /// [`PairConfig::validate`].
    pub fn new(cfg: PairConfig, state: StateMachine, now: Duration) -> Self {
        let interval = centiseconds(cfg.advert_interval_cs);
        let mut r = Self {
            next_seq: cfg.initial_sequence,
            state,
            role: Role::Secondary,
            now,
            window: ReplayWindow::new(),
            transmit: VecDeque::new(),
            applied: VecDeque::new(),
            restored: false,
            role_changed: false,
            stats: PairStats {
                role: Role::Secondary,
                synced: false,
                degraded: false,
                applied_index: 0,
                forwards_sent: 0,
                forward_retransmits: 0,
                acks_received: 0,
                acks_sent: 0,
                synchronous_applies: 0,
                degraded_applies: 0,
                forward_latency_total: Duration::ZERO,
                forward_latency_max: Duration::ZERO,
                dumps_sent: 0,
                dumps_received: 0,
                dump_requests_sent: 0,
                dump_failures: 0,
                adverts_sent: 0,
                adverts_received: 0,
                auth_failures: 0,
                replays: 0,
                malformed: 0,
                ignored: 0,
                bad_entries: 0,
                takeovers: 0,
                unsynced_takeovers: 0,
                step_downs: 0,
                degraded_entries: 0,
            },
            next_advert: now,
            master_down_at: now,
            peer_interval: interval,
            peer_primary: false,
            last_heard: None,
            applied_index: 0,
            next_index: 0,
            peer_acked: 0,
            log: VecDeque::new(),
            sent_index: 0,
            sent: BTreeMap::new(),
            next_retransmit: None,
            degraded: false,
            confirmed: false,
            peer_ready: false,
            synced: false,
            dump: None,
            reorder: BTreeMap::new(),
            cfg,
        };
        r.master_down_at = now + r.master_down_interval();
        r.send_advert();
        r.request_dump();
        r
    }

    // ---- accessors ----

    /// Current role.
    pub const fn role(&self) -> Role {
        self.role
    }
    /// Whether this node holds a complete copy (a primary always does).
    pub fn is_synced(&self) -> bool {
        self.role == Role::Primary || self.synced
    }
    /// Whether this primary is applying without acknowledgements.
    pub const fn is_degraded(&self) -> bool {
        self.degraded
    }
    /// Counters.
    pub fn stats(&self) -> PairStats {
        PairStats {
            role: self.role,
            synced: self.is_synced(),
            degraded: self.degraded,
            applied_index: self.applied_index,
            ..self.stats
        }
    }
    /// The configuration.
    pub const fn config(&self) -> &PairConfig {
        &self.cfg
    }
    /// Proposals accepted but not applied yet (primary).
    pub fn uncommitted(&self) -> u64 {
        match self.role {
            Role::Primary => self.next_index.saturating_sub(self.applied_index),
            Role::Secondary => 0,
        }
    }
    /// Master_Down_Interval for this node's priority and the peer's
    /// advertised interval [RFC 5798 § 6.1].
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.cfg.priority, self.peer_interval)
    }
    /// True once after the role changed: the daemon re-reads [`Self::role`]
    /// (only the primary proposes expiries: `Engine::set_propose_expiries`).
    pub fn take_role_change(&mut self) -> bool {
        std::mem::take(&mut self.role_changed)
    }
    /// True once after a dump replaced the whole state (no [`Applied`] is
    /// emitted for a dump; the daemon logs it).
    pub fn take_restored(&mut self) -> bool {
        std::mem::take(&mut self.restored)
    }
    /// Datagrams waiting in [`Self::poll_transmit`].
    pub fn pending_transmits(&self) -> usize {
        self.transmit.len()
    }

    /// The next applied command with how it was replicated.
    pub fn poll_applied_detail(&mut self) -> Option<(Applied, Replication)> {
        self.applied.pop_front()
    }

    /// The next datagram for the peer (UDP payload; the driver sends it
    /// from `cfg.local` to the returned address).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddrV4, Vec<u8>)> {
        self.flush_forwards();
        self.transmit.pop_front().map(|b| (self.cfg.peer, b))
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t = self.next_advert;
        match self.role {
            Role::Secondary => {
                t = t.min(self.master_down_at);
                if let Some(d) = &self.dump {
                    t = t.min(d.requested_at + self.dump_retry());
                }
            }
            Role::Primary => {
                if let Some(r) = self.next_retransmit {
                    t = t.min(r);
                }
                if !self.degraded {
                    if let Some(d) = self.degraded_deadline() {
                        t = t.min(d);
                    }
                }
            }
        }
        Some(t)
    }

    /// Advances the clock: advertisements, Master_Down timer, dump
    /// re-requests, forward retransmissions, degraded mode.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let now = self.now;
        if now >= self.next_advert {
            self.send_advert();
        }
        match self.role {
            Role::Secondary => {
                if now >= self.master_down_at {
                    self.take_over();
                } else if let Some(d) = &self.dump {
                    if now >= d.requested_at + self.dump_retry() {
                        self.request_dump();
                    }
                }
            }
            Role::Primary => {
                self.check_degraded();
                if self.next_retransmit.is_some_and(|r| now >= r) {
                    self.retransmit();
                }
            }
        }
    }

    /// Graceful stop: one advertisement with priority 0 so a secondary
    /// takes over after Skew_Time instead of Master_Down_Interval
    /// [RFC 5798 § 6.4.3]. Send what `poll_transmit` returns, then drop.
    pub fn shutdown(&mut self) {
        if self.role == Role::Primary {
            self.emit_advert(PRIORITY_STOP);
        }
    }

    // ---- receive ----

    /// One datagram from `src` (its UDP payload). Anything that is not an
    /// authenticated, fresh message from the configured peer is dropped and
    /// counted; it changes nothing else.
    pub fn handle_datagram(&mut self, now: Duration, src: SocketAddrV4, bytes: &[u8]) {
        self.now = self.now.max(now);
        if *src.ip() != *self.cfg.peer.ip() {
            self.stats.malformed += 1;
            return;
        }
        let (l, p) = (*self.cfg.local.ip(), *self.cfg.peer.ip());
        let Ok(v) = VrrpPacket::new_checked(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        if v.msg_type() == vrrp::TYPE_ADVERTISEMENT {
            self.receive_advert(bytes, p, l);
            return;
        }
        let repr = match SyncPacket::new_checked(bytes)
            .and_then(|pk| SyncRepr::parse(&pk, p, l, &self.cfg.key))
        {
            Ok(r) => r,
            Err(WireError::Authentication) => {
                self.stats.auth_failures += 1;
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if repr.vrid != self.cfg.vrid {
            self.stats.malformed += 1;
            return;
        }
        // Dump fragments bypass the window: a large dump is a burst of
        // consecutive numbers that the network may reorder by more than the
        // window's 64, and pushing the window past them would make the
        // adverts and forwards sent before them look old. A dump is bound to
        // our own fresh request instead (`ack_sequence`), and a replayed
        // fragment of the current dump is the same fragment again.
        if repr.msg_type != SyncType::DataDump && self.window.accept(repr.sequence).is_err() {
            self.stats.replays += 1;
            return;
        }
        self.last_heard = Some(self.now);
        match repr.msg_type {
            SyncType::DataDumpRequest => self.on_dump_request(&repr),
            SyncType::DataDump => self.on_dump(&repr),
            SyncType::DataForward => self.on_forward(&repr),
            SyncType::Ack => self.on_ack(&repr),
        }
    }

    fn receive_advert(&mut self, bytes: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
        let Ok(adv) = VrrpPacket::new_checked(bytes).and_then(|v| VrrpRepr::parse(&v, src, dst))
        else {
            self.stats.malformed += 1;
            return;
        };
        // The authenticated advertisement: VRRPv3 advert ‖ sync header ‖
        // HMAC (module docs). A bare RFC 5798 advert authenticates nothing.
        let Ok(pk) = SyncPacket::new_checked(bytes) else {
            self.stats.auth_failures += 1;
            return;
        };
        if !pk.verify_mac(src, dst, &self.cfg.key) {
            self.stats.auth_failures += 1;
            return;
        }
        if adv.vrid != self.cfg.vrid {
            self.stats.malformed += 1;
            return;
        }
        if self.window.accept(pk.sequence()).is_err() {
            self.stats.replays += 1;
            return;
        }
        let now = self.now;
        self.last_heard = Some(now);
        self.stats.adverts_received += 1;
        if adv.max_advert_int_cs > 0 {
            self.peer_interval = centiseconds(adv.max_advert_int_cs);
        }
        let peer_is_primary = pk.flags() & FLAG_PRIMARY != 0;
        let peer_synced = pk.flags() & FLAG_SYNCED != 0;
        let peer_index = pk.ack_sequence();
        let was_primary = std::mem::replace(&mut self.peer_primary, peer_is_primary);
        match self.role {
            Role::Secondary if peer_is_primary => {
                self.master_down_at = if adv.priority == PRIORITY_STOP {
                    // [RFC 5798 § 6.4.2]: the master is leaving.
                    now + skew_time(self.cfg.priority, self.peer_interval)
                } else {
                    now + self.master_down_interval()
                };
                if self.synced && peer_index > self.applied_index {
                    // The primary can no longer forward entries we lack
                    // (its log floor is above our index): our copy has a
                    // gap that only a dump closes.
                    self.synced = false;
                    self.request_dump();
                } else if !self.synced && (self.dump.is_none() || !was_primary) {
                    // Our earlier request went to a node that was not
                    // primary then: ask the new primary now.
                    self.request_dump();
                }
            }
            Role::Secondary => {}
            Role::Primary if !peer_is_primary => {
                self.set_peer_ready(peer_synced);
                if peer_synced && self.degraded && peer_index >= self.applied_index {
                    // A synced secondary that holds everything we applied
                    // (its copy comes only from us): synchronous again.
                    self.peer_acked = self.peer_acked.max(peer_index.min(self.next_index));
                    self.degraded = false;
                    self.confirmed = true;
                    self.trim_log();
                }
            }
            Role::Primary if peer_is_primary && adv.priority != PRIORITY_STOP => {
                // Two primaries: lower (priority, address) steps down
                // [RFC 5798 § 6.4.3, tie on the primary address].
                // A primary that booted alone into a partition holds
                // nothing acknowledged: a confirmed one wins first.
                let mine = (self.confirmed, self.cfg.priority, *self.cfg.local.ip());
                if (peer_synced, adv.priority, src) > mine {
                    self.step_down();
                } else {
                    self.send_advert();
                }
            }
            Role::Primary => {}
        }
    }

    fn on_dump_request(&mut self, req: &SyncRepr<'_>) {
        if self.role != Role::Primary {
            self.stats.ignored += 1;
            return;
        }
        // The secondary restarted or lost its copy: nothing it acked before
        // counts any more, until the dump is acknowledged.
        self.peer_acked = 0;
        self.sent.clear();
        self.sent_index = 0;
        self.peer_ready = false;
        let mut payload = Vec::with_capacity(8);
        payload.extend_from_slice(&self.applied_index.to_be_bytes());
        payload.extend_from_slice(&self.state.snapshot());
        let fixed = vrrp::HEADER_LEN
            + 4 * self.cfg.vips.len()
            + SYNC_HEADER_LEN
            + MAC_LEN
            + BLOCK_HEADER_LEN;
        let chunk = self
            .cfg
            .max_datagram
            .saturating_sub(fixed)
            .clamp(1, usize::from(u16::MAX));
        let records: Vec<&[u8]> = payload.chunks(chunk).collect();
        let template = SyncRepr {
            ack_sequence: req.sequence,
            ..self.template(SyncType::DataDump, 0)
        };
        let Ok(msgs) = split_records(&template, &records, self.cfg.max_datagram) else {
            self.stats.ignored += 1;
            return;
        };
        let count = msgs.len() as u64;
        // split_records numbers the fragments from the template's sequence.
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(count);
        let mut last_seq = first;
        for mut m in msgs {
            m.sequence = first.wrapping_add(u64::from(m.fragment_index));
            last_seq = m.sequence;
            self.emit(&m);
        }
        self.remember_sent(last_seq, self.applied_index);
        self.stats.dumps_sent += 1;
        // Entries after the dump are forwarded once it is acknowledged.
        self.next_retransmit = None;
    }

    fn on_dump(&mut self, m: &SyncRepr<'_>) {
        let Some(rx) = self.dump.as_mut() else {
            self.stats.ignored += 1;
            return;
        };
        if self.role != Role::Secondary || m.ack_sequence != rx.request_seq {
            // Not the answer to our current request (stale or reordered).
            self.stats.ignored += 1;
            return;
        }
        let recs: Vec<Vec<u8>> = m
            .blocks
            .iter()
            .filter(|b| b.subtype == Subtype::Registration)
            .map(|b| b.data.to_vec())
            .collect();
        rx.fragments.insert(m.fragment_index, recs);
        if !m.more_fragments {
            rx.last = Some(m.fragment_index);
            rx.last_seq = m.sequence;
        }
        let Some(last) = rx.last else { return };
        if rx.fragments.len() != usize::from(last) + 1
            || rx.fragments.keys().next_back() != Some(&last)
        {
            return;
        }
        let last_seq = rx.last_seq;
        let payload: Vec<u8> = rx
            .fragments
            .values()
            .flat_map(|f| f.iter().flatten().copied())
            .collect();
        let restored = match payload.split_first_chunk::<8>() {
            Some((idx, snap)) => self
                .state
                .restore(snap)
                .map(|()| u64::from_be_bytes(*idx))
                .ok(),
            None => None,
        };
        let Some(index) = restored else {
            self.stats.dump_failures += 1;
            self.request_dump();
            return;
        };
        self.dump = None;
        self.reorder.clear();
        self.applied_index = index;
        self.next_index = index;
        self.synced = true;
        self.restored = true;
        self.stats.dumps_received += 1;
        self.send_ack(last_seq);
    }

    fn on_forward(&mut self, m: &SyncRepr<'_>) {
        if self.role != Role::Secondary || !self.synced {
            self.stats.ignored += 1;
            return;
        }
        let mut entries = Vec::with_capacity(m.blocks.len());
        for b in m
            .blocks
            .iter()
            .filter(|b| b.subtype == Subtype::Registration)
        {
            let decoded = b.data.split_first_chunk::<8>().and_then(|(i, c)| {
                Command::decode(c)
                    .ok()
                    .map(|cmd| (u64::from_be_bytes(*i), cmd))
            });
            let Some(e) = decoded else {
                // An authenticated primary sent what we cannot apply (a
                // newer encoding?): never ack it.
                self.stats.bad_entries += 1;
                return;
            };
            entries.push(e);
        }
        let Some(&(lo, _)) = entries.first() else {
            self.send_ack(m.sequence);
            return;
        };
        if lo > self.applied_index + 1 {
            // A later forward overtook an earlier one: keep it briefly.
            if self.reorder.len() < REORDER_BUFFER {
                self.reorder.insert(lo, (m.sequence, entries));
            }
            return;
        }
        self.apply_forward(m.sequence, entries);
        while let Some(e) = self.reorder.first_entry() {
            if *e.key() > self.applied_index + 1 {
                break;
            }
            let (seq, entries) = e.remove();
            self.apply_forward(seq, entries);
        }
    }

    fn apply_forward(&mut self, seq: u64, entries: Vec<(u64, Command)>) {
        for (index, cmd) in entries {
            if index <= self.applied_index {
                continue; // duplicate from a retransmission
            }
            if index != self.applied_index + 1 {
                return; // gap inside one message: never ack
            }
            let result = self.state.apply(&cmd);
            self.applied_index = index;
            self.applied.push_back((
                Applied {
                    request: None,
                    command: cmd,
                    result,
                },
                Replication::Synchronous,
            ));
        }
        self.send_ack(seq);
    }

    fn on_ack(&mut self, m: &SyncRepr<'_>) {
        if self.role != Role::Primary {
            self.stats.ignored += 1;
            return;
        }
        let Some(&hi) = self.sent.get(&m.ack_sequence) else {
            self.stats.ignored += 1;
            return;
        };
        if hi > self.peer_acked {
            self.peer_acked = hi;
            self.stats.acks_received += 1;
        }
        // The secondary holds a copy of everything up to `hi`.
        self.confirmed = true;
        self.peer_ready = true;
        // Transmissions that hold nothing new for the peer are done.
        let done: Vec<u64> = self
            .sent
            .iter()
            .filter(|&(_, &h)| h <= self.peer_acked)
            .map(|(&s, _)| s)
            .collect();
        for s in done {
            self.sent.remove(&s);
        }
        self.commit(
            self.peer_acked.min(self.next_index),
            Replication::Synchronous,
        );
        if self.degraded && self.peer_acked >= self.applied_index {
            // The secondary holds everything again.
            self.degraded = false;
        }
        if self.peer_acked >= self.next_index {
            self.next_retransmit = None;
        } else {
            // More to send (after a dump, or a burst limit): at once.
            self.sent_index = self.sent_index.max(self.peer_acked);
            self.next_retransmit = Some(self.now);
        }
        self.trim_log();
    }

    // ---- primary ----

    fn degraded_deadline(&self) -> Option<Duration> {
        let silent = self.last_heard.unwrap_or(Duration::ZERO) + self.master_down_interval();
        let oldest = self
            .log
            .iter()
            .find(|e| e.index > self.applied_index)
            .map(|e| e.proposed_at + self.forward_timeout());
        Some(oldest.map_or(silent, |o| o.min(silent)))
    }

    fn forward_timeout(&self) -> Duration {
        self.cfg
            .forward_timeout
            .unwrap_or_else(|| self.master_down_interval())
    }

    fn check_degraded(&mut self) {
        if self.role != Role::Primary || self.degraded {
            return;
        }
        let now = self.now;
        let silent = self
            .last_heard
            .is_none_or(|h| now >= h + self.master_down_interval());
        let stuck = self
            .log
            .iter()
            .find(|e| e.index > self.applied_index)
            .is_some_and(|e| now >= e.proposed_at + self.forward_timeout());
        if silent {
            self.peer_ready = false;
        }
        if silent || stuck {
            self.enter_degraded();
        }
    }

    fn set_peer_ready(&mut self, ready: bool) {
        if ready && !self.peer_ready && self.peer_acked < self.next_index {
            self.next_retransmit = Some(self.now);
        }
        self.peer_ready = ready;
    }

    fn enter_degraded(&mut self) {
        self.degraded = true;
        self.stats.degraded_entries += 1;
        self.commit(self.next_index, Replication::Degraded);
        self.trim_log();
    }

    /// Applies log entries up to `upto` in order.
    fn commit(&mut self, upto: u64, how: Replication) {
        while self.applied_index < upto {
            let next = self.applied_index + 1;
            let Some(e) = self.log.iter().find(|e| e.index == next) else {
                return;
            };
            let (cmd, request, at) = (e.command.clone(), e.request, e.proposed_at);
            let result = self.state.apply(&cmd);
            self.applied_index = next;
            match how {
                Replication::Synchronous => {
                    self.stats.synchronous_applies += 1;
                    let lat = self.now.saturating_sub(at);
                    self.stats.forward_latency_total += lat;
                    self.stats.forward_latency_max = self.stats.forward_latency_max.max(lat);
                }
                Replication::Degraded => self.stats.degraded_applies += 1,
            }
            self.applied.push_back((
                Applied {
                    request,
                    command: cmd,
                    result,
                },
                how,
            ));
        }
    }

    /// The highest index that is no longer in the forward log.
    fn log_floor(&self) -> u64 {
        self.log
            .front()
            .map_or(self.applied_index, |e| e.index.saturating_sub(1))
    }

    fn trim_log(&mut self) {
        let keep_after = self.applied_index.min(self.peer_acked);
        while let Some(e) = self.log.front() {
            let over = self.log.len() > self.cfg.max_log && e.index <= self.applied_index;
            if e.index <= keep_after || over {
                self.log.pop_front();
            } else {
                break;
            }
        }
    }

    /// Sends the entries not sent yet (new proposals), in bursts.
    fn flush_forwards(&mut self) {
        if self.role != Role::Primary || !self.peer_ready || self.sent_index >= self.next_index {
            return;
        }
        let from = self.sent_index.max(self.peer_acked) + 1;
        self.send_forwards(from);
        if self.next_retransmit.is_none() {
            self.next_retransmit = Some(self.now + self.retransmit_interval());
        }
    }

    fn retransmit(&mut self) {
        if self.peer_acked >= self.next_index || !self.peer_ready {
            self.next_retransmit = None;
            return;
        }
        let from = self.peer_acked + 1;
        let before = self.stats.forwards_sent;
        self.send_forwards(from);
        self.stats.forward_retransmits += self.stats.forwards_sent - before;
        self.next_retransmit = Some(self.now + self.retransmit_interval());
    }

    fn retransmit_interval(&self) -> Duration {
        if self.degraded {
            // Nobody may be listening: do not flood a dead peer.
            centiseconds(self.cfg.advert_interval_cs)
        } else {
            self.cfg.retransmit
        }
    }

    /// Forward messages holding the log from index `from` on.
    fn send_forwards(&mut self, from: u64) {
        let fixed = vrrp::HEADER_LEN + 4 * self.cfg.vips.len() + SYNC_HEADER_LEN + MAC_LEN;
        let mut msgs: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
        let mut cur: Vec<Vec<u8>> = Vec::new();
        let mut cur_len = fixed;
        let mut hi = 0;
        for e in self.log.iter().filter(|e| e.index >= from) {
            let need = BLOCK_HEADER_LEN + e.record.len();
            if !cur.is_empty() && cur_len + need > self.cfg.max_datagram {
                msgs.push((hi, std::mem::take(&mut cur)));
                cur_len = fixed;
                if msgs.len() == FORWARD_BURST {
                    break;
                }
            }
            cur.push(e.record.clone());
            cur_len += need;
            hi = e.index;
        }
        if !cur.is_empty() && msgs.len() < FORWARD_BURST {
            msgs.push((hi, cur));
        }
        for (hi, recs) in msgs {
            let seq = self.take_seq();
            let m = SyncRepr {
                blocks: recs
                    .iter()
                    .map(|r| DataBlock {
                        subtype: Subtype::Registration,
                        data: r,
                    })
                    .collect(),
                ..self.template(SyncType::DataForward, seq)
            };
            self.emit(&m);
            self.remember_sent(seq, hi);
            self.sent_index = self.sent_index.max(hi);
            self.stats.forwards_sent += 1;
        }
    }

    fn remember_sent(&mut self, seq: u64, hi: u64) {
        self.sent.insert(seq, hi);
        while self.sent.len() > SENT_MEMORY {
            self.sent.pop_first();
        }
    }

    // ---- roles ----

    fn take_over(&mut self) {
        self.stats.takeovers += 1;
        if !self.synced {
            self.stats.unsynced_takeovers += 1;
        }
        self.role = Role::Primary;
        self.role_changed = true;
        self.confirmed = self.synced;
        self.dump = None;
        self.reorder.clear();
        self.synced = false;
        self.next_index = self.applied_index;
        self.peer_acked = 0;
        self.sent.clear();
        self.sent_index = self.applied_index;
        self.log.clear();
        self.next_retransmit = None;
        self.peer_ready = false;
        // The peer went silent: that is why we take over. Serve alone
        // until it comes back and acknowledges a dump.
        self.degraded = true;
        self.stats.degraded_entries += 1;
        // [RFC 5798 § 6.4.2]: a new master advertises at once.
        self.send_advert();
    }

    fn step_down(&mut self) {
        self.stats.step_downs += 1;
        self.role = Role::Secondary;
        self.role_changed = true;
        self.degraded = false;
        self.confirmed = false;
        // Uncommitted proposals are lost (the engine's commit timeout).
        self.log.clear();
        self.sent.clear();
        self.next_index = self.applied_index;
        self.next_retransmit = None;
        self.synced = false;
        self.master_down_at = self.now + self.master_down_interval();
        self.request_dump();
    }

    // ---- emit ----

    fn dump_retry(&self) -> Duration {
        centiseconds(self.cfg.advert_interval_cs) * 2
    }

    fn request_dump(&mut self) {
        let seq = self.take_seq();
        self.dump = Some(DumpRx {
            request_seq: seq,
            requested_at: self.now,
            ..DumpRx::default()
        });
        self.reorder.clear();
        let m = self.template(SyncType::DataDumpRequest, seq);
        self.emit(&m);
        self.stats.dump_requests_sent += 1;
    }

    fn send_ack(&mut self, acked: u64) {
        let seq = self.take_seq();
        let m = SyncRepr {
            ack_sequence: acked,
            ..self.template(SyncType::Ack, seq)
        };
        self.emit(&m);
        self.stats.acks_sent += 1;
    }

    fn send_advert(&mut self) {
        self.emit_advert(self.cfg.priority);
    }

    fn emit_advert(&mut self, priority: u8) {
        self.next_advert = self.now + centiseconds(self.cfg.advert_interval_cs);
        let (l, p) = (*self.cfg.local.ip(), *self.cfg.peer.ip());
        let adv = VrrpRepr {
            vrid: self.cfg.vrid,
            priority,
            max_advert_int_cs: self.cfg.advert_interval_cs,
            addresses: self.cfg.vips.clone(),
        };
        let Ok(mut b) = adv.to_bytes(l, p) else {
            return;
        };
        let seq = self.take_seq();
        let flags = match self.role {
            Role::Primary if self.confirmed => FLAG_PRIMARY | FLAG_SYNCED,
            Role::Primary => FLAG_PRIMARY,
            Role::Secondary if self.synced => FLAG_SYNCED,
            Role::Secondary => 0,
        };
        b.extend_from_slice(&seq.to_be_bytes());
        // The index slot: a primary's log floor (below it, a secondary must
        // already hold everything: forwards cannot bring it any more), a
        // secondary's applied index.
        let index = match self.role {
            Role::Primary => self.log_floor(),
            Role::Secondary => self.applied_index,
        };
        b.extend_from_slice(&index.to_be_bytes());
        b.extend_from_slice(&[0, 0, flags, 0, 0, 0]);
        b.extend_from_slice(&[0; MAC_LEN]);
        if sync::seal(&mut b, l, p, &self.cfg.key).is_ok() {
            self.transmit.push_back(b);
            self.stats.adverts_sent += 1;
        }
    }

    fn template(&self, t: SyncType, seq: u64) -> SyncRepr<'static> {
        SyncRepr {
            msg_type: t,
            vrid: self.cfg.vrid,
            priority: self.cfg.priority,
            max_advert_int_cs: self.cfg.advert_interval_cs,
            addresses: self.cfg.vips.clone(),
            sequence: seq,
            ack_sequence: 0,
            fragment_index: 0,
            more_fragments: false,
            blocks: Vec::new(),
        }
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        s
    }

    fn emit(&mut self, m: &SyncRepr<'_>) {
        let (l, p) = (*self.cfg.local.ip(), *self.cfg.peer.ip());
        if let Ok(b) = m.to_bytes(l, p, &self.cfg.key) {
            self.transmit.push_back(b);
        }
    }
}

impl Replicator for PairReplicator {
    /// Primary: queues the command, forwards it, applies it after the
    /// secondary's ack (or at once when degraded). Secondary:
    /// `Unavailable`, so the engine never acknowledges here.
    fn propose(&mut self, id: RequestId, cmd: Command) -> Result<(), ProposeError> {
        if self.role != Role::Primary {
            return Err(ProposeError::Unavailable);
        }
        self.next_index += 1;
        let index = self.next_index;
        let mut record = Vec::with_capacity(40);
        record.extend_from_slice(&index.to_be_bytes());
        record.extend_from_slice(&cmd.encode());
        self.log.push_back(Entry {
            index,
            command: cmd,
            record,
            request: Some(id),
            proposed_at: self.now,
        });
        if self.degraded {
            self.commit(index, Replication::Degraded);
        }
        Ok(())
    }

    fn poll_applied(&mut self) -> Option<Applied> {
        self.poll_applied_detail().map(|(a, _)| a)
    }

    fn state(&self) -> &StateMachine {
        &self.state
    }
}
