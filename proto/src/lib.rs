//! # haven-proto
//!
//! The one place where every byte haven puts on or takes off the wire is
//! defined. Nothing in here opens a socket or reads a clock: parsers take
//! byte slices, emitters write into caller-provided buffers, and the
//! authenticators take keys as arguments (the shape of `smoltcp::wire`).
//!
//! Contract, as in smoltcp's `wire` module:
//! * untrusted input enters only through `Packet::new_checked` (or a `Repr`'s
//!   `parse`), which validates lengths once; after that no accessor panics;
//! * `Repr::emit` never panics into a buffer of exactly `buffer_len()` bytes;
//! * every failure is a typed [`Error`], which the home agent maps to a
//!   registration reply code in one place ([`mip::ReplyCode`]'s `From<Error>`).
//!
//! Modules:
//! * [`mip`]: Mobile IPv4 registration request/reply (RFC 5944 §3.3–3.4), the
//!   extension framework (§1.9 skippable rule), authentication (§3.5.1),
//!   identification and replay protection (§5.7), vendor extensions.
//! * [`ip`]: the IPv4/UDP header helpers and the Internet checksum.
//! * [`udptun`]: RFC 3519 UDP tunnelling (tunnel data message, keepalives).
//! * [`vrrp`]: RFC 5798 VRRPv3 advertisements.
//! * [`advert_auth`]: node health adverts with the sync HMAC trailer and a
//!   sequence number (docs/security.md).
//! * [`withdraw`]: a node's report to the dispatchers that a Raft peer's
//!   process is gone (same framing, key and sequence as the adverts).
//! * [`dispatch`]: the dispatcher's encap-mode header (original addresses).
//! * [`sync`]: the seed 002 figure 13b binding-sync messages (Data Dump
//!   Request, Data Dump, Data Forward, Ack) with an HMAC-SHA256 trailer.
//! * [`pcap`]: a pcap writer (raw IPv4) for the tests and the simulator.
//! * [`grpc`]: the cluster's gRPC contract (Raft transport, admin API).

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

mod error;
pub use error::{Error, Result};

pub mod advert_auth;
pub mod dispatch;
pub mod ip;
pub mod mip;
pub mod pcap;
pub mod sync;
pub mod udptun;
pub mod vrrp;
pub mod withdraw;

#[cfg(feature = "grpc")]
pub mod grpc;

/// A half-open byte range inside a fixed header (smoltcp's `wire::field`).
pub(crate) type Field = core::ops::Range<usize>;
/// The rest of a buffer from a fixed offset.
pub(crate) type Rest = core::ops::RangeFrom<usize>;
