//! Raft replication ([DESIGN.md § 4], "raft" mode): tikv's raft-rs
//! `RawNode` over a `raft-engine` log, messages over tonic.
//!
//! * [`storage`] — [`RaftStore`]: the log, hard state and snapshot, durable
//!   (raft-engine) or in memory (simulation);
//! * [`node`] — [`RaftReplicator`]: the `Replicator` the engine talks to,
//!   plus the driver API (`tick`, `step`, `handle_ready`, `poll_messages`);
//! * [`transport`] — the `RaftTransport` gRPC server and per-peer clients.
//!
//! # Configuration (proposed `[cluster]` section)
//!
//! ```toml
//! [cluster]
//! mode = "raft"                  # "raft" | "pair" | "local"
//! node_id = 1                    # non-zero, unique
//! cluster_id = "haven-outer"     # refuses batches from another cluster
//! listen = "198.18.0.11:7400"    # RaftTransport gRPC
//! data_dir = "/var/lib/haven/raft"
//! tick_ms = 50                   # RaftConfig::TICK
//! election_ticks = 10
//! heartbeat_ticks = 2
//! snapshot_every = 10000
//! join = false                   # true: start empty, wait to be added
//! [[cluster.peer]]               # every voter, this node included
//! id = 1
//! address = "198.18.0.11:7400"
//! [[cluster.peer]]
//! id = 2
//! address = "198.18.0.12:7400"
//! ```
//!
//! `RaftConfig::new(node_id, if join { vec![] } else { peer ids })`, then
//! set the tick counts and `snapshot_every`.
//!
//! # Wiring in the daemon
//!
//! ```text
//! let store = RaftStore::open(&cluster.data_dir)?;   // blocking; at start-up
//! let mut node = RaftReplicator::new(&RaftConfig::new(id, voters), store, sm)?;
//! let (transport, mut inbound) = Transport::new(id, cluster_id, peers);
//! // serve transport.server() on cluster.listen;
//! loop {
//!     select! {
//!         _ = ticker.tick() => node.tick(),
//!         Some(m) = inbound.recv() => match m {
//!             Inbound::Message(m) => { let _ = node.step(*m); } // log + drop errors
//!             Inbound::Unreachable(id) => node.report_unreachable(id),
//!             Inbound::Snapshot { to, delivered } => node.report_snapshot(to, delivered),
//!         },
//!         Ok(r) = refusals.recv() => {          // transport.refusals()
//!             let term = node.status().term;      // "Leader death" (node.rs)
//!             node.leader_refused(r.peer, term);
//!         }
//!         cmd = engine_commands.recv() => { node.propose(id, cmd) … }
//!     }
//!     // Step every message already queued (inbound.try_recv()) before
//!     // one Ready: one fsync per burst, not per message.
//!     node.handle_ready_sending(&mut |to, m| transport.send(to, m))?; // fatal on storage error
//!     while let Some(a) = node.poll_applied() { engine.on_applied(a); }
//! }
//! ```

pub mod node;
pub mod storage;
pub mod transport;

pub use node::{RaftConfig, RaftError, RaftReplicator, RaftStats, RaftStatus, Role};
pub use storage::{RaftStore, StoreError};
pub use transport::{Inbound, PeerMap, PeerRefused, Transport, next_refusal};
