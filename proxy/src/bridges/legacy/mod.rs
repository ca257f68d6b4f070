//! Bridges for the 2024-11-05 HTTP+SSE transport, in both directions.
//!
//! mcplb's workers speak Streamable HTTP (2025-03-26 and later) to clients and backends. The
//! old transport is translated at the edges by two small in-process HTTP/1.1 servers on
//! `127.0.0.1:0`, built on std threads and blocking I/O (they are not the hot path):
//!
//! - [`LegacyFront`] serves old clients: `GET {prefix}/sse` opens the event stream whose first
//!   event, `endpoint`, names `{prefix}/messages?sessionId=...`; each POST there is answered
//!   202 and forwarded as Streamable HTTP to an upstream URL (mcplb's own listener), and every
//!   message the upstream answers, or sends on its standalone GET stream, is written to the
//!   client's event stream as `event: message`.
//! - [`LegacyBackend`] puts an old server behind mcplb: it serves Streamable HTTP at `/mcp`;
//!   `initialize` opens the old server's SSE stream, learns the POST endpoint from its
//!   `endpoint` event and binds a new `Mcp-Session-Id` to that connection; later requests are
//!   POSTed to the endpoint and answered when the response with the same id comes back on the
//!   stream (as JSON, or as an SSE stream carrying progress and other intermediate messages
//!   first).

mod backend;
mod front;
mod net;

pub use backend::LegacyBackend;
pub use front::LegacyFront;

/// The header in which mcplb's worker gives [`LegacyFront`] the id of the session a
/// `GET {prefix}/sse` opens (a sealed id bound to the caller, in groups with authentication).
/// Only the worker sets it: a client's own is dropped before the request reaches the bridge.
pub const LEGACY_SESSION_HEADER: &str = "mcplb-legacy-session";

/// Gap between two `: keepalive` comments on an idle event stream.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
