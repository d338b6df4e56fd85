//! The cluster's gRPC contract, generated from `proto/haven.proto`.
//!
//! * `raft_transport_{client,server}`: node-to-node Raft messages (raft-rs
//!   `Message`s carried as bytes, batched per peer) and snapshot chunks.
//! * `admin_{client,server}`: status, bindings, drain, leadership, members.
//!
//! Daemons convert these types to validated domain types at the boundary.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

tonic::include_proto!("haven.v1");
