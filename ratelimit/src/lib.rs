//! Lock-free rate limits for mcplb (token buckets / GCRA). No I/O; time is an argument.
//!
//! Empty until the rate-limit issue lands; the crate exists so the layout and dependency
//! direction (proxy -> ratelimit) are fixed from the start.
