//! # haven-cluster-tests
//!
//! haven's laboratory (being written).

pub mod fleet;
pub mod mn;
pub mod mnsim;
pub mod supervisor;
pub mod topo;
