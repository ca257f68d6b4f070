//! Holds the criterion benchmarks (see `benches/`) and the side-by-side scripts; no library code.
