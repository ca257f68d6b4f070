//! Fuzzes the chunked decoder (request bodies and forwarded chunked answers): the input fed
//! whole and cut at places chosen by the first bytes gives the same data, end and verdict; and
//! the input taken as a body, chunked and decoded again, comes back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb::internals;

fuzz_target!(|data: &[u8]| {
    let (seed, input) = data.split_at(data.len().min(4));
    let cuts: Vec<usize> = seed.iter().map(|b| usize::from(*b) * 31 + 1).collect();
    internals::check_chunked(input, &cuts);
    let sizes: Vec<usize> = seed.iter().map(|b| usize::from(*b) + 1).collect();
    let flags = seed.first().copied().unwrap_or(0);
    internals::check_chunked_round_trip(input, &sizes, flags & 1 != 0, flags & 2 != 0, &cuts);
});
