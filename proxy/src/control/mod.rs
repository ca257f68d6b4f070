//! The control plane: everything that watches or steers the data path from outside a request.
//! The admin port and its endpoints, the statistics every core records and the hub that merges
//! them, hot reload of the configuration, and the active MCP health checks. None of it runs on
//! the request path; workers only record into per-core state that these modules read.

pub(crate) mod access_log;
pub mod admin;
pub mod cluster;
pub mod distribution;
pub mod health;
pub mod logs;
pub(crate) mod policy_admin;
pub mod reload;
pub mod stats;
