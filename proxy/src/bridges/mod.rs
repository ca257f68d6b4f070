//! Bridges to the MCP servers that do not speak Streamable HTTP: stdio servers mcplb starts and
//! supervises, and the 2024-11-05 HTTP+SSE transport (old servers as backends, old clients in
//! front). Each bridge is an in-process HTTP server on loopback that the workers reach like any
//! other backend, so the data path knows only one kind of upstream.

pub mod legacy;
pub mod stdio;
