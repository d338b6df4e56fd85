//! # haven-ha-node
//!
//! The home agent node. Sans-IO state lives in the library modules; the
//! daemon (`main.rs`) wires sockets, timers and the admin API around them.
//!
//! * [`config`] — the TOML configuration and its validation;
//! * [`dataplane`] — forwarding to care-of addresses and reverse tunnelling (TUN, IP in IP, RFC 3519);
//! * [`engine`] — the sans-IO registration engine (checks, replies, proposals);
//! * [`binding`] — the shared binding table and the expiry schedule;
//! * [`pool`] — deterministic dynamic home address pools;
//! * [`command`] — replicated commands and the deterministic state machine;
//! * [`replicate`] — the replication seam (local; Raft and pair later);
//! * [`raft`] — the Raft replicator, its durable log and its transport;
//! * [`pair`] — pair mode: seed 002 fig. 13 data dump / data forward;
//! * [`pairmode`] — pair mode in the daemon: sync socket, pump, metrics;
//! * [`advertise`] — health advertisements to the dispatchers (`[dispatch]`);
//! * [`ingress`] — the dispatcher's encap mode, node side;
//! * [`cluster`] — raft mode in the daemon: the pump the driver calls;
//! * [`subscriber`] — security association look-up;
//! * [`net`] — the UDP socket layer (batched, per-datagram destination);
//! * [`server`] — the daemon: driver task, admin gRPC, shutdown;
//! * [`telemetry`] — metric names and the Prometheus endpoint;
//! * [`tls`] — mutual TLS for the Raft transport and the admin API;
//! * [`limiter`] — sans-IO token buckets against registration floods.

pub mod advertise;
pub mod binding;
#[cfg(feature = "daemon")]
pub mod cluster;
pub mod command;
pub mod config;
pub mod dataplane;
pub mod engine;
#[cfg(feature = "daemon")]
pub mod ingress;
pub mod limiter;
#[cfg(feature = "daemon")]
pub mod net;
pub mod pair;
#[cfg(feature = "daemon")]
pub mod pairmode;
pub mod pool;
#[cfg(feature = "daemon")]
pub mod raft;
pub mod replicate;
#[cfg(feature = "daemon")]
pub mod server;
pub mod subscriber;
#[cfg(feature = "daemon")]
pub mod telemetry;
#[cfg(feature = "daemon")]
pub mod tls;
