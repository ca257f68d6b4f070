//! mcplb-mock: a fast mock MCP server speaking Streamable HTTP ([`MockServer`]).
//!
//! It is the backend of `mcplb demo`, the peer of the proxy's integration
//! tests and the target of `mcplb-load`. It is a crate of its own so that the
//! `mcplb` binary can run the demo's backends without linking the load
//! generator.

pub mod http;
mod server;

pub use server::{MockConfig, MockServer};
