//! # haven-dispatcher
//!
//! The UDP source-port dispatcher (DESIGN.md §5; issue "Dispatcher").
