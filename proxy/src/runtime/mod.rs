//! The runtime shell around the data path: per-core state, the accept loop, idle parking.

pub(crate) mod listen;
pub(crate) mod park;
