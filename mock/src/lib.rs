//! mcplb-mock: a fast mock MCP server speaking Streamable HTTP ([`MockServer`]).
//!
//! It is the backend of `mcplb demo`, the peer of the proxy's integration
//! tests and the target of `mcplb-load`. It is a crate of its own so that the
//! `mcplb` binary can run the demo's backends without linking the load
//! generator, which shares its HTTP helpers ([`http`]) and runtime set-up
//! ([`runtime`]).
//!
//! Its request path is built not to be the bottleneck of a benchmark: the
//! common requests are answered without serde_json values (module `fast`), and the
//! threads share no lock per request (module `state`).

mod fast;
pub mod http;
mod rpc;
pub mod runtime;
mod server;
mod state;

pub use server::{MockConfig, MockServer};
