//! Fuzzes `sse::event_data`: it must never panic, must give the data that
//! `SseParser` dispatches first for the same bytes (ended by a blank line),
//! and `event_data_in` must agree with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb_protocol::sse::{event_data, event_data_in, SseParser};

fuzz_target!(|event: &[u8]| {
    let got = event_data(event);
    let mut joined = Vec::new();
    assert_eq!(event_data_in(event, &mut joined), got.as_deref());
    let mut parser = SseParser::with_max_event_bytes(usize::MAX);
    parser.push(event);
    parser.push(b"\n\n");
    let want = parser.next_event().map(|e| e.data);
    assert_eq!(
        got.as_deref().map(|d| String::from_utf8_lossy(d).into_owned()),
        want
    );
});
