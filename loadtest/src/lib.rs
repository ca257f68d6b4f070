//! mcplb-load: an MCP load generator ([`load`]) for benchmarking and testing
//! mcplb. The mock MCP backend it drives in tests and benchmarks lives in the
//! `mcplb-mock` crate (`mcplb-load mock` runs it).

pub mod h3;
pub mod load;
pub mod output;
pub mod pace;
pub mod procstat;
pub mod scenario;
pub mod url;

pub use h3::{run_h3, H3Options, H3Report};
pub use load::{run_load, CallCount, CallSpec, ErrorCounts, LoadOptions, LoadReport};
pub use scenario::Scenario;
