//! # haven-cluster-tests
//!
//! haven's laboratory: namespace topologies, the process supervisor, the
//! mobile-node clients (the sans-IO core, the `mnsim` fleet and the full dual
//! client of seed 000), the rack, the VPN lab, chaos scenarios and the
//! benchmarks' shared parts.

pub mod bench;
pub mod chaos;
pub mod datapath;
pub mod dual;
pub mod e2e;
pub mod fleet;
pub mod mn;
pub mod mnsim;
pub mod rack;
pub mod site;
pub mod supervisor;
pub mod topo;
pub mod vpn;
