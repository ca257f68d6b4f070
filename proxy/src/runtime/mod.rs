//! The runtime shell around the data path: per-core state, the accept loop, idle parking.

pub(crate) mod park;
