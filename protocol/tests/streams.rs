//! Fixtures for the stream framers: SSE events and stdio lines, fed in every
//! possible chunking.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcplb_protocol::{LineError, LineFramer, SseBoundary, SseError, SseEvent, SseParser};

fn events_of(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.push(c);
        while let Some(e) = p.next_event() {
            out.push(e);
        }
    }
    out
}

/// Feeds `stream` split at every pair of positions and checks both parsers
/// agree with the unsplit result.
fn check_all_splits(stream: &[u8], want: &[SseEvent]) {
    assert_eq!(events_of(&[stream]), want);
    for i in 0..=stream.len() {
        for j in i..=stream.len() {
            let parts: [&[u8]; 3] = [&stream[..i], &stream[i..j], &stream[j..]];
            assert_eq!(events_of(&parts), want, "split at {i},{j}");
            let mut b = SseBoundary::new();
            let n: usize = parts.iter().map(|p| b.feed(p)).sum();
            assert_eq!(n, want.len(), "boundary split at {i},{j}");
        }
    }
}

fn ev(event: Option<&str>, data: &str, id: Option<&str>, retry: Option<u64>) -> SseEvent {
    SseEvent {
        event: event.map(str::to_owned),
        data: data.to_owned(),
        id: id.map(str::to_owned),
        retry,
    }
}

#[test]
fn sse_basic_mcp_stream() {
    let stream = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\nid: 7\n\n";
    check_all_splits(
        stream,
        &[ev(
            Some("message"),
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            Some("7"),
            None,
        )],
    );
}

#[test]
fn sse_line_endings_comments_multiline_and_bom() {
    let stream = b"\xEF\xBB\xBFdata: a\r\ndata:b\r\rdata\n\n: keepalive\n\nretry: 3000\nid\nevent:x\ndata:  c\r\n\r\n";
    check_all_splits(
        stream,
        &[
            ev(None, "a\nb", None, None),
            ev(None, "", None, None),
            ev(Some("x"), " c", None, Some(3000)),
        ],
    );
}

#[test]
fn sse_id_persists_and_events_without_data_are_not_dispatched() {
    let stream = b"id: 1\ndata: a\n\nevent: lonely\n\ndata: b\n\nid: \x00x\ndata: c\n\nretry: 1x\ndata: d\n\n";
    check_all_splits(
        stream,
        &[
            ev(None, "a", Some("1"), None),
            ev(None, "b", Some("1"), None),
            ev(None, "c", Some("1"), None),
            ev(None, "d", Some("1"), None),
        ],
    );
}

#[test]
fn sse_incomplete_event_is_held() {
    let mut p = SseParser::new();
    p.push(b"data: part");
    assert_eq!(p.next_event(), None);
    p.push(b"ial\n");
    assert_eq!(p.next_event(), None);
    p.push(b"\n");
    assert_eq!(p.next_event().unwrap().data, "partial");
    assert_eq!(p.last_event_id(), None);
}

#[test]
fn sse_oversized_event_is_reported_once_and_skipped() {
    let mut p = SseParser::with_max_event_bytes(16);
    p.push(b"data: small\n\ndata: 0123456789");
    p.push(b"0123456789\ndata: more\n\ndata: after\n\n");
    assert_eq!(p.try_next_event(), Some(Ok(ev(None, "small", None, None))));
    assert_eq!(p.try_next_event(), Some(Err(SseError::EventTooLarge)));
    assert_eq!(p.try_next_event(), Some(Ok(ev(None, "after", None, None))));
    assert_eq!(p.try_next_event(), None);

    let mut b = SseBoundary::with_max_event_bytes(16);
    assert_eq!(b.try_feed(b"data: small\n\n"), Ok(1));
    assert_eq!(
        b.try_feed(b"data: 01234567890123456789"),
        Err(SseError::EventTooLarge)
    );
    assert_eq!(b.try_feed(b"\n\n"), Ok(1));
    assert_eq!(b.events(), 2);
}

#[test]
fn sse_boundary_counts_across_byte_chunks() {
    let stream = b": ping\n\nevent: message\ndata: {}\n\ndata\r\n\r\n:c\r\rdata: x\r\r";
    let mut b = SseBoundary::new();
    let n: usize = stream.iter().map(|c| b.feed(std::slice::from_ref(c))).sum();
    assert_eq!(n, 3);
    // `datax:` and `dat:` are other fields, not data.
    let mut b = SseBoundary::new();
    assert_eq!(b.feed(b"datax: 1\n\ndat: 2\n\n"), 0);
    assert_eq!(b.pending_event_bytes(), 0);
}

#[test]
fn lines_basic_and_crlf() {
    let mut f = LineFramer::new(100);
    f.push(b"{\"a\":1}\r\n{\"b\"");
    assert_eq!(f.next_line(), Some(Ok(&b"{\"a\":1}"[..])));
    assert_eq!(f.next_line(), None);
    f.push(b":2}\n\n");
    assert_eq!(f.next_line(), Some(Ok(&b"{\"b\":2}"[..])));
    assert_eq!(f.next_line(), Some(Ok(&b""[..])));
    assert_eq!(f.next_line(), None);
    assert_eq!(f.buffered(), 0);
}

#[test]
fn lines_too_long_reported_once_and_not_buffered() {
    let mut f = LineFramer::new(8);
    f.push(b"short\n0123456789");
    f.push(b"abcdef");
    assert!(f.buffered() <= 16, "too-long tail must not be buffered");
    f.push(&[b'z'; 1000]);
    assert!(f.buffered() <= 16);
    f.push(b"xyz\nok\n");
    assert_eq!(f.next_line(), Some(Ok(&b"short"[..])));
    assert_eq!(f.next_line(), Some(Err(LineError::TooLong)));
    assert_eq!(f.next_line(), Some(Ok(&b"ok"[..])));
    assert_eq!(f.next_line(), None);
    // A complete too-long line inside one chunk is also reported once.
    f.push(b"0123456789\n12345678\r\n");
    assert_eq!(f.next_line(), Some(Err(LineError::TooLong)));
    assert_eq!(f.next_line(), Some(Ok(&b"12345678"[..])));
    assert_eq!(f.next_line(), None);
}

#[test]
fn lines_every_chunking_gives_the_same_lines() {
    let stream = b"aaaa\nbbbbbbbbbbbbbbbbbb\r\ncc\r\n\nddddddddddd\nee";
    let want: Vec<Result<Vec<u8>, LineError>> = vec![
        Ok(b"aaaa".to_vec()),
        Err(LineError::TooLong),
        Ok(b"cc".to_vec()),
        Ok(b"".to_vec()),
        Err(LineError::TooLong),
    ];
    for i in 0..=stream.len() {
        for j in i..=stream.len() {
            let mut f = LineFramer::new(6);
            let mut got = Vec::new();
            for part in [&stream[..i], &stream[i..j], &stream[j..]] {
                f.push(part);
                while let Some(l) = f.next_line() {
                    got.push(l.map(<[u8]>::to_vec));
                }
            }
            assert_eq!(got, want, "split at {i},{j}");
        }
    }
}

#[test]
fn event_data_reads_one_event_by_the_event_stream_rules() {
    use mcplb_protocol::sse::{event_data, event_data_in};
    use std::borrow::Cow;
    let data = |e: &[u8]| event_data(e).map(|d| String::from_utf8(d.into_owned()).unwrap());
    // One data line is borrowed in place, whatever ends its line.
    for e in [
        &b"data: {}"[..],
        b"data: {}\n\n",
        b"data:{}\r\n\r\n",
        b"data: {}\r\r",
    ] {
        assert!(matches!(event_data(e), Some(Cow::Borrowed(b"{}"))), "{e:?}");
    }
    // Several are joined with LF, however their lines end; only one space goes.
    assert_eq!(
        data(b"data: a\rdata:  b\r\ndata:c\n\n").as_deref(),
        Some("a\n b\nc")
    );
    // A bare `data` is an empty line; an empty first line keeps its LF.
    assert_eq!(data(b"data\n\n").as_deref(), Some(""));
    assert_eq!(data(b"data\ndata: x\n").as_deref(), Some("\nx"));
    // Comments, other fields and near-names are not data; an event without data has none.
    assert_eq!(
        data(b": keepalive\nevent: message\nid: 3\ndatax: no\ndata: yes\nretry: 5\n").as_deref(),
        Some("yes")
    );
    assert_eq!(data(b": ping\nevent: x\n\n"), None);
    // A byte-order mark is line content in an event (as in a stream past its start, where
    // `SseParser` reads `\u{feff}data` as another field); blank lines before the data pass;
    // the event ends at the blank line after it.
    assert_eq!(data(b"\xEF\xBB\xBFdata: a\n"), None);
    let mut p = SseParser::new();
    p.push(b"data: 1\n\n\xEF\xBB\xBFdata: a\n\ndata: 2\n\n");
    let dispatched: Vec<String> = std::iter::from_fn(|| p.next_event().map(|e| e.data)).collect();
    assert_eq!(dispatched, ["1", "2"]);
    assert_eq!(data(b"\n\r\ndata: a\n\ndata: b\n\n").as_deref(), Some("a"));
    // The reused buffer takes a join, and only a join.
    let mut joined = b"old".to_vec();
    assert_eq!(event_data_in(b"data: a\n", &mut joined), Some(&b"a"[..]));
    assert_eq!(
        event_data_in(b"data: a\ndata: b\n", &mut joined),
        Some(&b"a\nb"[..])
    );
    assert_eq!(joined, b"a\nb");
}

#[test]
fn a_streams_byte_order_mark_is_dropped_at_its_start_only() {
    use mcplb_protocol::sse::{event_data, event_end, strip_bom, PendingEvents, StartBom};
    let stream = b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n";
    assert_eq!(
        events_of(&[stream]),
        [SseEvent {
            data: "a".into(),
            ..SseEvent::default()
        }]
    );
    let mut b = SseBoundary::new();
    assert_eq!(b.feed(stream), 1);
    // Cut out of the stream whole, after `strip_bom`.
    let rest = strip_bom(stream);
    let n = event_end(rest).unwrap();
    assert_eq!(event_data(&rest[..n]).as_deref(), Some(&b"a"[..]));
    assert_eq!(event_data(&rest[n..]), None);
    // Over pieces, the mark split between two: held back, then dropped.
    let mut start = StartBom::new();
    assert_eq!(start.skip(b"\xEF\xBB"), (&b""[..], &b""[..]));
    assert_eq!(start.skip(b"\xBFdata"), (&b""[..], &b"data"[..]));
    assert_eq!(
        start.skip(b"\xEF\xBB\xBF"),
        (&b""[..], &b"\xEF\xBB\xBF"[..])
    );
    // What looked like a mark's first bytes but is not: given back, before the piece.
    let mut start = StartBom::new();
    assert_eq!(start.skip(b"\xEF"), (&b""[..], &b""[..]));
    assert_eq!(start.skip(b"data"), (&b"\xEF"[..], &b"data"[..]));
    // A buffer: nothing while it could be a mark's first bytes, then the mark, once.
    let mut pending = PendingEvents::new();
    pending.extend(b"\xEF\xBB");
    assert_eq!(pending.next_event(), None);
    assert_eq!(pending.rest(), b"\xEF\xBB");
    pending.extend(b"\xBFdata: a\n\n\xEF\xBB\xBF");
    assert_eq!(pending.next_event(), Some(&b"data: a\n\n"[..]));
    assert_eq!(pending.next_event(), None);
    assert_eq!(pending.rest(), b"\xEF\xBB\xBF");
    pending.extend(b"data: b\r");
    assert_eq!(pending.next_event(), None);
    pending.extend(b"\r");
    assert_eq!(pending.next_event(), Some(&b"\xEF\xBB\xBFdata: b\r\r"[..]));
    // The LF after that CR: the second half of a CRLF, a blank line before the next event.
    pending.extend(b"\n: c\n\nda");
    assert_eq!(pending.next_event(), Some(&b"\n: c\n\n"[..]));
    assert_eq!(pending.next_event(), None);
    assert_eq!(pending.take_rest(), b"da");
    assert!(pending.is_empty());
    // A stream that is a mark's first bytes and no more: they are its rest.
    let mut pending = PendingEvents::new();
    pending.extend(b"\xEF");
    assert_eq!(pending.next_event(), None);
    assert_eq!(pending.take_rest(), b"\xEF");
}

#[test]
fn write_data_ends_a_line_at_a_lone_cr_as_clients_do() {
    use mcplb_protocol::sse::write_data;
    let mut out = Vec::new();
    write_data(&mut out, b"a\rb\r\nc\nd\r");
    assert_eq!(
        out,
        b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n".as_slice()
    );
    assert_eq!(events_of(&[&out])[0].data, "a\nb\nc\nd\n");
    out.clear();
    write_data(&mut out, b"");
    assert_eq!(out, b"data: \n\n");
}
