//! Fuzzes the SSE parser, the boundary counter and the line framer: they must
//! never panic, and must give the same result however the input is chunked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb_protocol::{LineFramer, SseBoundary, SseParser};

fn run(chunks: &[&[u8]]) -> (Vec<String>, usize, Vec<Result<Vec<u8>, ()>>) {
    let mut parser = SseParser::with_max_event_bytes(256);
    let mut boundary = SseBoundary::with_max_event_bytes(256);
    let mut lines = LineFramer::new(64);
    let mut events = Vec::new();
    let mut counted = 0;
    let mut got_lines = Vec::new();
    for c in chunks {
        parser.push(c);
        counted += boundary.feed(c);
        lines.push(c);
        while let Some(e) = parser.try_next_event() {
            events.push(format!("{e:?}"));
        }
        while let Some(l) = lines.next_line() {
            got_lines.push(l.map(<[u8]>::to_vec).map_err(|_| ()));
        }
    }
    (events, counted, got_lines)
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let (a, b) = data.split_at(split);
    let whole = run(&[data]);
    let halves = run(&[a, b]);
    assert_eq!(whole, halves);
});
