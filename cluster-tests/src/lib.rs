//! # haven-cluster-tests
//!
//! haven's laboratory (being written).

pub mod bench;
pub mod datapath;
pub mod fleet;
pub mod mn;
pub mod mnsim;
pub mod rack;
pub mod supervisor;
pub mod topo;
pub mod vpn;
