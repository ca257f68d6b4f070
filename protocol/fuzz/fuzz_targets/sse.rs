//! Fuzzes the SSE parser, the boundary counter, the event boundary finder and
//! the line framer: they must never panic, and must give the same result
//! however the input is chunked; the events `EventEnds` cuts out (after
//! `StartBom` drops the stream's byte-order mark) must carry the data
//! `SseParser` dispatches, `PendingEvents` must cut the same events, and
//! `SseBoundary` must count as many.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb_protocol::sse::{event_data, PendingEvents, StartBom};
use mcplb_protocol::{EventEnds, LineFramer, SseBoundary, SseParser};

type Run = (Vec<String>, usize, Vec<Result<Vec<u8>, ()>>, Vec<Option<Vec<u8>>>);

fn run(chunks: &[&[u8]]) -> Run {
    let mut parser = SseParser::with_max_event_bytes(256);
    let mut boundary = SseBoundary::with_max_event_bytes(256);
    let mut lines = LineFramer::new(64);
    let mut ends = EventEnds::new();
    let mut start = StartBom::new();
    let mut events = Vec::new();
    let mut counted = 0;
    let mut got_lines = Vec::new();
    let (mut cut, mut open) = (Vec::new(), Vec::new());
    let (mut pending, mut pending_cut) = (PendingEvents::new(), Vec::new());
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
        let (held, rest) = start.skip(c);
        for mut rest in [held, rest] {
            while let Some(n) = ends.next_end(rest) {
                let (last, next) = rest.split_at(n);
                open.extend_from_slice(last);
                cut.push(event_data(&open).map(|d| d.into_owned()));
                open.clear();
                rest = next;
            }
            open.extend_from_slice(rest);
        }
        pending.extend(c);
        while let Some(event) = pending.next_event() {
            pending_cut.push(event_data(event).map(|d| d.into_owned()));
        }
    }
    assert_eq!(pending_cut, cut);
    (events, counted, got_lines, cut)
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let (a, b) = data.split_at(split);
    let whole = run(&[data]);
    let halves = run(&[a, b]);
    // The cut events' data agree as far as the data go; the bytes cut at a CR
    // whose LF comes in the next chunk lead the next event, which changes no data.
    assert_eq!(whole, halves);
    let mut parser = SseParser::with_max_event_bytes(usize::MAX);
    parser.push(data);
    let want: Vec<Vec<u8>> = std::iter::from_fn(|| parser.next_event())
        .map(|e| e.data.into_bytes())
        .collect();
    let got: Vec<Vec<u8>> = whole
        .3
        .into_iter()
        .flatten()
        .map(|d| String::from_utf8_lossy(&d).into_owned().into_bytes())
        .collect();
    assert_eq!(got, want);
    let mut boundary = SseBoundary::with_max_event_bytes(usize::MAX);
    assert_eq!(boundary.feed(data), want.len());
});
