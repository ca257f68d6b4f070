//! Property tests: the parser never panics, agrees with serde_json on what is
//! valid JSON, and reads the same method / id / name as serde_json does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcplb_protocol::sse::{
    event_data, event_data_in, event_end, strip_bom, write_data, EventEnds, PendingEvents,
    SseBoundary, SseParser, StartBom,
};
use mcplb_protocol::{
    parse_message, response_error_code, response_outcome, FrameErrorKind as K, MessageKind, Method,
};
use proptest::prelude::*;
use std::borrow::Cow;

const SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris","n":[1,-2.5e3,true,null]},"_meta":{"progressToken":"t"}}}"#,
    r#"{"jsonrpc":"2.0","id":"a\"\u00e9","result":{"content":[{"type":"text","text":"x\ny"}]}}"#,
    r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"no"}],"isError":true}}"#,
    r#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"m"}}]"#,
];

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        Just(b'"'),
        Just(b'\\'),
        Just(b'{'),
        Just(b'}'),
        Just(b'['),
        Just(b']'),
        Just(b','),
        Just(b':'),
        Just(b'0'),
        Just(b'e'),
        Just(b'u'),
        Just(b' '),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.as_bytes().to_vec();
    for e in edits {
        let len = v.len().max(1);
        match *e {
            Edit::Set(i, b) if !v.is_empty() => v[i % len] = b,
            Edit::Insert(i, b) => v.insert(i % (v.len() + 1), b),
            Edit::Remove(i) if !v.is_empty() => {
                v.remove(i % len);
            }
            _ => {}
        }
    }
    v
}

fn is_parse_error(k: K) -> bool {
    matches!(
        k,
        K::Empty | K::Truncated | K::Syntax { .. } | K::InvalidUtf8
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_message(&bytes);
        let _ = response_outcome(&bytes);
        let _ = response_error_code(&bytes);
    }

    #[test]
    fn response_outcome_never_panics_on_mutations(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let bytes = apply(SEEDS[seed], &edits);
        let _ = response_outcome(&bytes);
        let _ = response_error_code(&bytes);
    }

    /// On any valid response, with members in any order and any values (nested objects and
    /// arrays, strings with quotes, brackets and escapes), the early-exit outcome agrees with
    /// the full parse.
    #[test]
    fn response_outcome_agrees_with_the_full_parse(
        id in prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ],
        text in any::<String>(),
        extra in any::<String>(),
        is_error in any::<bool>(),
        order in 0usize..6,
        pretty in any::<bool>(),
    ) {
        let outcome = if is_error {
            ("error", serde_json::json!({"code": -32000, "message": text, "data": [extra.clone(), {"}": "]"}]}))
        } else {
            ("result", serde_json::json!({"content": [{"type": "text", "text": text}], "x": {"error": extra.clone()}}))
        };
        let mut members = vec![
            ("jsonrpc", serde_json::json!("2.0")),
            ("id", id),
            outcome,
        ];
        members.rotate_left(order % 3);
        if order >= 3 {
            members.insert(0, ("_extra", serde_json::json!({"error": [extra, "\"{"]})));
        }
        // serde_json sorts object keys, so the text is built by hand to control the order.
        let sep = if pretty { ",\n  " } else { "," };
        let body: Vec<String> = members
            .iter()
            .map(|(k, v)| {
                let v = if pretty { serde_json::to_string_pretty(v).unwrap() } else { v.to_string() };
                format!("\"{k}\":{}{v}", if pretty { " " } else { "" })
            })
            .collect();
        let text = format!("{{{}}}", body.join(sep));
        let full = parse_message(text.as_bytes()).unwrap();
        prop_assert_eq!(response_outcome(text.as_bytes()), Some(full.has_error), "{}", text);
    }

    #[test]
    fn mutations_agree_with_serde_json_on_validity(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let bytes = apply(SEEDS[seed], &edits);
        let ours = parse_message(&bytes);
        let theirs = serde_json::from_slice::<serde_json::Value>(&bytes);
        let ours_valid_json = match &ours {
            Ok(_) => true,
            Err(e) => !is_parse_error(e.kind),
        };
        prop_assert_eq!(ours_valid_json, theirs.is_ok(), "{:?} vs {:?}", ours, theirs.err());
    }

    /// Wherever a mutated frame is still valid, `tool_error` is what serde_json reads:
    /// `result.isError` is the boolean `true`.
    #[test]
    fn tool_error_agrees_with_serde_json(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec(edit(), 0..4),
    ) {
        let bytes = apply(SEEDS[seed], &edits);
        if let (Ok(env), Ok(v)) = (
            parse_message(&bytes),
            serde_json::from_slice::<serde_json::Value>(&bytes),
        ) {
            let theirs = v.get("result").and_then(|r| r.get("isError")) == Some(&serde_json::Value::Bool(true));
            prop_assert_eq!(env.tool_error, theirs, "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn serde_json_requests_read_back(
        id in prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ],
        method in any::<String>(),
        name in any::<String>(),
        extra in any::<String>(),
        name_first in any::<bool>(),
    ) {
        let params = if name_first {
            serde_json::json!({ "name": name, "arguments": { "x": extra } })
        } else {
            serde_json::json!({ "arguments": { "name": extra }, "name": name })
        };
        let msg = serde_json::json!({
            "params": params, "method": method, "id": id, "jsonrpc": "2.0",
        });
        let text = serde_json::to_string(&msg).unwrap();
        let env = parse_message(text.as_bytes()).unwrap();
        prop_assert_eq!(env.kind, MessageKind::Request);
        let id_text = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(env.id.unwrap(), id_text.as_bytes());
        let m = env.method.unwrap();
        prop_assert_eq!(m.decode(), method.as_str());
        prop_assert!(m.eq_str(&method));
        let n = env.name.unwrap();
        prop_assert_eq!(n.decode(), name.as_str());
        prop_assert!(n.eq_str(&name));
        let args = serde_json::to_string(&msg["params"]["arguments"]).unwrap();
        prop_assert_eq!(env.arguments, Some(args.as_bytes()));
    }

    #[test]
    fn escaped_strings_decode_like_serde_json(s in any::<String>()) {
        // Force \u escapes for every non-ASCII char, as some clients do.
        let mut esc = String::from("\"");
        for c in s.chars() {
            if c.is_ascii() && c != '"' && c != '\\' && !c.is_ascii_control() {
                esc.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    esc.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        esc.push('"');
        let msg = format!(r#"{{"jsonrpc":"2.0","method":{esc}}}"#);
        let env = parse_message(msg.as_bytes()).unwrap();
        prop_assert_eq!(env.method.unwrap().decode(), s.as_str());
        prop_assert!(env.method.unwrap().eq_str(&s));
    }

    #[test]
    fn method_of_agrees_with_the_decoded_comparison(
        pick in 0..Method::NAMED.len() + 1,
        cut in 0usize..30,
        extra in "[a-z/]{0,3}",
        escape_at in proptest::option::of(0usize..30),
    ) {
        // A known name, a prefix of one or one with bytes added, written plainly or with one
        // character as a \u escape: `Method::of` (the raw text compared when nothing is
        // escaped) must name the method that comparing the decoded text names.
        let base = Method::NAMED.get(pick).map_or("notifications/initialized", |m| m.name());
        let mut name: String = base.chars().take(cut.max(1)).collect();
        if cut >= base.len() {
            name.push_str(&extra);
        }
        let mut raw = String::new();
        for (i, c) in name.chars().enumerate() {
            if Some(i) == escape_at {
                raw.push_str(&format!("\\u{:04x}", u32::from(c)));
            } else {
                raw.push(c);
            }
        }
        let msg = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{raw}"}}"#);
        let m = parse_message(msg.as_bytes()).unwrap().method.unwrap();
        let slow = Method::NAMED
            .iter()
            .copied()
            .find(|n| m.eq_str(n.name()))
            .unwrap_or(Method::Other);
        prop_assert_eq!(Method::of(&m), slow);
        prop_assert_eq!(Method::of(&m), Method::from_name(&name));
    }

    #[test]
    fn event_data_agrees_with_the_stream_parser(
        parts in proptest::collection::vec(sse_piece(), 0..10),
        bom in any::<bool>(),
    ) {
        // One event's bytes built from field lines, comments, blank lines and every line end:
        // `event_data` must give what `SseParser` dispatches first for the same bytes (ended by
        // a blank line) after the stream's start, borrow when there is one data line, and
        // `event_data_in` the same. A byte-order mark there is line content for both.
        let mut event: Vec<u8> = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
        for p in &parts {
            event.extend_from_slice(p.as_bytes());
        }
        let mut parser = SseParser::new();
        // A comment takes the parser past the stream's start; it dispatches nothing.
        parser.push(b":\n\n");
        parser.push(&event);
        parser.push(b"\n\n");
        let want = parser.next_event().map(|e| e.data);
        let got = event_data(&event);
        prop_assert_eq!(
            got.as_deref().map(|d| String::from_utf8_lossy(d).into_owned()),
            want.clone()
        );
        let mut joined = Vec::new();
        prop_assert_eq!(event_data_in(&event, &mut joined), got.as_deref());
        if let Some(Cow::Owned(d)) = &got {
            // Joined only when there were several data lines.
            prop_assert!(want.is_some_and(|w| w.contains('\n')), "{:?}", d);
        }
    }

    #[test]
    fn event_ends_cut_what_the_stream_parser_dispatches(
        parts in proptest::collection::vec(sse_piece(), 0..40),
        bom in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        // A stream of field lines, comments and blank lines with every line end, cut into
        // events by `event_end`: each event's data (`event_data`) is what `SseParser`
        // dispatches, in order, none missed, none merged. Read in pieces cut anywhere (also
        // between the CR and the LF of a CRLF), by `EventEnds` over the pieces and by
        // `PendingEvents` over a buffer that grows as a streaming caller's does, the events'
        // data are the same, and their bytes and what is left make up the stream less its
        // byte-order mark (`strip_bom`, `StartBom` over pieces or a buffer); `SseBoundary`
        // counts as many events.
        let (stream, want) = stream_and_data(&parts, bom);

        let body = strip_bom(&stream).to_vec();
        let mut whole = Vec::new();
        let mut rest = &body[..];
        while let Some(n) = event_end(rest) {
            prop_assert!(n > 0);
            whole.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        prop_assert_eq!(data_of(&whole), want.clone());
        prop_assert_eq!([whole.concat(), rest.to_vec()].concat(), body.clone());

        let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for &c in at.iter().chain(std::iter::once(&stream.len())) {
            pieces.push(&stream[from..c]);
            from = c;
        }

        let (mut ends, mut events, mut open) = (EventEnds::new(), Vec::new(), Vec::new());
        let mut start = StartBom::new();
        let mut counter = SseBoundary::new();
        let mut counted = 0;
        for piece in &pieces {
            counted += counter.feed(piece);
            let (held, rest) = start.skip(piece);
            for mut p in [held, rest] {
                while let Some(n) = ends.next_end(p) {
                    open.extend_from_slice(&p[..n]);
                    events.push(std::mem::take(&mut open));
                    p = &p[n..];
                }
                open.extend_from_slice(p);
            }
        }
        prop_assert_eq!(counted, want.len());
        prop_assert_eq!(data_of(&events), want.clone());
        prop_assert_eq!([events.concat(), open].concat(), body.clone());

        let (mut pending, mut events) = (PendingEvents::new(), Vec::new());
        for piece in &pieces {
            pending.extend(piece);
            while let Some(event) = pending.next_event() {
                events.push(event.to_vec());
            }
        }
        prop_assert_eq!(data_of(&events), want);
        prop_assert_eq!([events.concat(), pending.take_rest()].concat(), body);
    }

    #[test]
    fn pending_events_cut_what_the_stream_parser_dispatches(
        parts in proptest::collection::vec(sse_piece(), 0..40),
        bom in any::<bool>(),
        reads in proptest::collection::vec((1usize..12, 0usize..3), 0..30),
    ) {
        // `PendingEvents` read as the era relays read it: the stream's bytes come in pieces of
        // any size (also a byte-order mark split), and after each piece only some of the whole
        // events are cut (a relay stops cutting at a request it must answer first), the rest
        // after later pieces or at the stream's end. The events' data are `SseParser`'s, in
        // order, and their bytes and what is left make up the stream less its mark.
        let (stream, want) = stream_and_data(&parts, bom);
        let (mut pending, mut events) = (PendingEvents::new(), Vec::<Vec<u8>>::new());
        let mut rest = &stream[..];
        for (size, cuts) in reads.iter().copied().chain(std::iter::repeat((1, 1))) {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at(size.min(rest.len()));
            rest = after;
            pending.extend(piece);
            for _ in 0..cuts {
                match pending.next_event() {
                    Some(event) => events.push(event.to_vec()),
                    None => break,
                }
            }
        }
        while let Some(event) = pending.next_event() {
            events.push(event.to_vec());
        }
        prop_assert_eq!(data_of(&events), want);
        prop_assert!(events.iter().all(|e| event_end(e) == Some(e.len())));
        prop_assert_eq!(pending.rest().len(), strip_bom(&stream).len() - events.concat().len());
        prop_assert_eq!([events.concat(), pending.take_rest()].concat(), strip_bom(&stream));
    }
}

proptest! {
    #[test]
    fn written_data_reads_back(data in "[a\r\n{}\"é:]{0,40}") {
        // `write_data` then the stream parser: the same data, its line ends (CRLF, LF or a
        // lone CR, as the rules end lines) come back as LF; one event.
        let mut out = Vec::new();
        write_data(&mut out, data.as_bytes());
        let mut parser = SseParser::new();
        parser.push(&out);
        let want = data.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(parser.next_event().map(|e| e.data), Some(want));
        prop_assert!(parser.next_event().is_none());
        prop_assert_eq!(event_end(&out), Some(out.len()));
    }
}

/// The stream of `parts` (after a byte-order mark if `bom`) and the data of the events
/// `SseParser` dispatches from it.
fn stream_and_data(parts: &[String], bom: bool) -> (Vec<u8>, Vec<String>) {
    let mut stream: Vec<u8> = if bom {
        b"\xEF\xBB\xBF".to_vec()
    } else {
        Vec::new()
    };
    for p in parts {
        stream.extend_from_slice(p.as_bytes());
    }
    let mut parser = SseParser::new();
    parser.push(&stream);
    let want = std::iter::from_fn(|| parser.next_event())
        .map(|e| e.data)
        .collect();
    (stream, want)
}

/// The data of events cut out of a stream (`event_data`), as text.
fn data_of(events: &[Vec<u8>]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| event_data(e).map(|d| String::from_utf8_lossy(&d).into_owned()))
        .collect()
}

/// A piece of an event stream: a field line with any line end, a comment, a blank line.
fn sse_piece() -> impl Strategy<Value = String> {
    let eol = prop_oneof![Just("\n"), Just("\r"), Just("\r\n"), Just("")];
    let name = prop_oneof![
        Just("data"),
        Just("data"),
        Just("\u{feff}data"),
        Just("event"),
        Just("id"),
        Just("retry"),
        Just("dat"),
        Just("datax"),
        Just(""),
    ];
    let value = "[ a:{}\"é\u{feff}]{0,6}";
    (
        name,
        prop_oneof![Just(""), Just(":"), Just(": ")],
        value,
        eol,
    )
        .prop_map(|(name, colon, value, eol)| format!("{name}{colon}{value}{eol}"))
}
