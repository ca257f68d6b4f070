//! mcplb-load: a fast mock MCP backend ([`mock`]) and an MCP load generator
//! ([`load`]) for benchmarking and testing mcplb.

pub mod http;
pub mod load;
pub mod mock;
pub mod output;
pub mod pace;
pub mod runtime;
pub mod scenario;

pub use load::{run_load, CallCount, CallSpec, ErrorCounts, LoadOptions, LoadReport};
pub use mock::{MockConfig, MockServer};
pub use scenario::Scenario;
