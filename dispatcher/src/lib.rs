//! # haven-dispatcher
//!
//! The UDP source-port dispatcher (DESIGN.md §5; seed 002, figures 14a–14b).
//! A pair of dispatchers holds the home-agent address (the VIP) and spreads
//! mobile nodes over the home-agent nodes by a hash of (source IP, source UDP
//! port) alone, so it never parses Mobile IP: a mobile node uses the same
//! source port for its Registration Request and its RFC 3519 UDP-tunnelled
//! data, so both land on the same node, and every node answers from the VIP
//! itself (direct server return).
//!
//! This crate holds the sans-IO cores; sockets, timers and tasks live in the
//! daemon around them:
//!
//! * [`maglev`] — the Maglev lookup table (Eisenbud et al., NSDI 2016 §3.4)
//!   over the configured nodes, with the unhealthy nodes' entries re-filled
//!   over the healthy ones, and the stable flow/address keys.
//! * [`health`] — node health from the nodes' VRRP-format advertisements
//!   (priority = capacity, 0 = draining), with RFC 5798 down timing and
//!   hysteresis, and the peers' withdrawals of a node whose process is gone.
//! * [`pool`] — the two together: adverts in, table lookups out.
//! * [`vrrp`] — the RFC 5798 state machine by which the dispatcher pair owns
//!   the VIP.
//!
//! And the daemon (`src/main.rs`, binary `dispatcher`) around them:
//!
//! * [`config`] — the TOML configuration and its validation;
//! * [`frame`] — the frames written by hand: l2 Ethernet/IPv4/UDP, the
//!   Ethernet header in front of IP-in-IP, the MAC rewrite and checksum
//!   completion of home-prefix frames, their classic BPF filter, gratuitous
//!   ARP, the neighbour-table lookup;
//! * [`driver`] — forwarding workers (recvmmsg → Maglev → sendmmsg) for UDP
//!   to VIP:434, IP-in-IP to the VIP and the home-prefix gateway, the
//!   control loop (adverts, VRRP, VIP ownership, gratuitous ARP repeats,
//!   metrics);
//! * `sys` — the few raw system calls (AF_PACKET with a BPF filter and
//!   `PACKET_AUXDATA`, recvmmsg/sendmmsg, poll).
//!
//! ## Time
//! Every core takes `now: std::time::Instant` from its caller and never reads
//! the clock itself; deadlines come back as `Instant`s from `poll_timeout()`.
//! Tests drive a virtual clock: one `Instant::now()` origin plus `Duration`s,
//! never a sleep. The algorithm choices are written up in
//! `docs/dispatcher.md`.

use core::fmt;

pub mod config;
pub mod driver;
pub mod frame;
pub mod health;
pub mod maglev;
pub mod pool;
mod sys;
pub mod vrrp;

pub use health::{HealthEvent, HealthTracker, NodeState, Reason, WithdrawOutcome};
pub use maglev::{MaglevTable, NodeSpec, addr_key, flow_key};
pub use pool::{NodePool, PoolConfig};
pub use vrrp::{Action, Vrrp, VrrpConfig, VrrpState};

/// A home-agent node's configured identifier.
///
/// The Maglev permutations hash this number, so it must be the same on both
/// dispatchers and stable across restarts: it comes from configuration, never
/// from the order nodes are listed in or from an address that may be
/// renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}
