//! What ha-node's integration tests share (each test file says `mod common;`;
//! this directory is not a test binary of its own):
//!
//! * [`node`]: the real daemon on loopback or in a namespace — start it, wait
//!   for its readiness metric, ask its admin API and `havenctl`, check a
//!   config;
//! * [`load`]: the continuous registration load of the replication tests
//!   (`pair_cluster.rs`, `raft_cluster.rs`) and the DESIGN.md § 9 check that
//!   every acknowledged binding survived;
//! * [`sim`]: the seeded generator and commands of the deterministic
//!   simulations (`pair_sim.rs`, `raft_sim.rs`).

// Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod load;
pub mod node;
pub mod sim;
