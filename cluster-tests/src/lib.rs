//! # haven-cluster-tests
//!
//! haven's laboratory (being written).

pub mod supervisor;
pub mod topo;
