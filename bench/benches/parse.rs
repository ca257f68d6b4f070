//! How long it takes to read the routing fields (id, method, params.name) of
//! one ~200-byte MCP `tools/call` request: mcplb's own scanner against
//! simd-json's tape and serde_json into a borrowed struct; plus SSE event
//! boundary scanning over a 4 KiB stream, and the response cache's eviction
//! sniffer per event: event-aware (`EventSniffer`) against the raw name search
//! it replaced (`RawSniffer`, the old `Sniffer`'s feed); and a virtual server's
//! relay of one member event: the zero-copy scanner (`relay_event`) against the
//! serde `Value` parse it replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::{parse_message, response_outcome, SseBoundary};
use serde::Deserialize;
use serde_json::value::RawValue;
use simd_json::prelude::*;

const TOOLS_CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris","units":"metric","days":3},"_meta":{"progressToken":"p-42"}}}"#;

/// What every contender must produce.
type Fields<'a> = (&'a [u8], &'a str, &'a str);

fn ours(buf: &[u8]) -> Fields<'_> {
    let env = parse_message(buf).unwrap();
    (
        env.id.unwrap(),
        env.method.unwrap().raw_str(),
        env.name.unwrap().raw_str(),
    )
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

fn bench_parse(c: &mut Criterion) {
    assert!(TOOLS_CALL.len() > 150 && TOOLS_CALL.len() < 260);
    let (id, method, name) = ours(TOOLS_CALL);
    assert_eq!(
        (id, method, name),
        (&b"42"[..], "tools/call", "get_weather")
    );

    let mut g = c.benchmark_group("parse_tools_call");
    g.throughput(Throughput::Elements(1));

    g.bench_function("mcplb_parse_message", |b| {
        b.iter(|| {
            let f = ours(black_box(TOOLS_CALL));
            black_box(f);
        })
    });

    let mut buffers = simd_json::Buffers::new(TOOLS_CALL.len());
    let mut copy = TOOLS_CALL.to_vec();
    g.bench_function("simd_json_tape", |b| {
        b.iter(|| {
            // simd-json parses in place, so it needs its own mutable copy.
            copy.clear();
            copy.extend_from_slice(black_box(TOOLS_CALL));
            let tape = simd_json::to_tape_with_buffers(&mut copy, &mut buffers).unwrap();
            let v = tape.as_value();
            let id = v.get("id").and_then(|i| i.as_i64()).unwrap();
            let method = v.get("method").unwrap();
            let params = v.get("params").unwrap();
            let name = params.get("name").unwrap();
            let token = params.get("_meta").unwrap().get("progressToken").unwrap();
            let (method, name, token) = (
                method.as_str().unwrap(),
                name.as_str().unwrap(),
                token.as_str().unwrap(),
            );
            black_box((id, method.len(), name.len(), token.len()));
        })
    });

    g.bench_function("serde_json_borrowed_struct", |b| {
        b.iter(|| {
            let r: Request<'_> = serde_json::from_slice(black_box(TOOLS_CALL)).unwrap();
            let p = r.params.unwrap();
            let token = p.meta.and_then(|m| m.progress_token).unwrap();
            black_box((
                r.jsonrpc.len(),
                r.id.get().len(),
                r.method.len(),
                p.name.unwrap().len(),
                token.get().len(),
            ));
        })
    });
    g.finish();
}

/// Telling a JSON-RPC error answer from a result (the proxy's statistics count errors): the
/// full validating parse against the early-exit read of `response_outcome`, on a small answer
/// and on an 8 KiB tool result.
fn bench_outcome(c: &mut Criterion) {
    let small = br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"Paris: 21 C, sunny"}],"isError":false}}"#.to_vec();
    let mut big =
        br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 8192));
    big.extend_from_slice(br#""}]}}"#);
    let mut g = c.benchmark_group("response_outcome");
    g.throughput(Throughput::Elements(1));
    for (name, body) in [("small", &small), ("8KiB", &big)] {
        assert_eq!(response_outcome(body), Some(false));
        assert!(!parse_message(body).unwrap().has_error);
        g.bench_function(format!("parse_message_{name}"), |b| {
            b.iter(|| black_box(parse_message(black_box(body)).unwrap().has_error))
        });
        g.bench_function(format!("response_outcome_{name}"), |b| {
            b.iter(|| black_box(response_outcome(black_box(body))))
        });
    }
    g.finish();
}

/// A realistic 4 KiB stream: progress notifications, keepalives and a result.
fn sse_stream() -> Vec<u8> {
    let mut s = Vec::new();
    let mut i = 0;
    while s.len() < 4096 - 160 {
        if i % 5 == 4 {
            s.extend_from_slice(b": keepalive\n\n");
        } else {
            s.extend_from_slice(
                format!(
                    "event: message\nid: {i}\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":\"p-42\",\"progress\":{i}}}}}\n\n"
                )
                .as_bytes(),
            );
        }
        i += 1;
    }
    s.resize(4096, b' ');
    s.extend_from_slice(b"\n\n");
    s.truncate(4096);
    s
}

fn bench_sse(c: &mut Criterion) {
    let stream = sse_stream();
    let mut g = c.benchmark_group("sse_boundary_4KiB");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("whole_stream", |b| {
        b.iter(|| {
            let mut scan = SseBoundary::new();
            black_box(scan.feed(black_box(&stream)))
        })
    });
    g.bench_function("in_512B_chunks", |b| {
        b.iter(|| {
            let mut scan = SseBoundary::new();
            let n: usize = stream.chunks(512).map(|c| scan.feed(black_box(c))).sum();
            black_box(n)
        })
    });
    g.finish();
}

/// An answer event of `pad` bytes of text (a tool result), as a Python SDK server writes it.
fn answer_event(pad: usize) -> Vec<u8> {
    format!(
        "event: message\ndata: {{\"jsonrpc\": \"2.0\", \"id\": 7, \"result\": {{\"content\": [{{\"type\": \"text\", \"text\": \"{}\"}}]}}}}\n\n",
        "x".repeat(pad)
    )
    .into_bytes()
}

fn bench_sniff(c: &mut Criterion) {
    use mcplb::cache::{EventSniffer, RawSniffer};
    let note = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n".to_vec();
    let progress = sse_stream();
    let small = answer_event(200);
    let large = answer_event(64 * 1024);
    let mut g = c.benchmark_group("cache_sniff");
    for (name, bytes, piece) in [
        ("answer_300B", &small, usize::MAX),
        ("list_changed", &note, usize::MAX),
        ("progress_4KiB_26_events", &progress, usize::MAX),
        ("answer_64KiB_in_4KiB_reads", &large, 4096),
    ] {
        g.bench_function(format!("{name}/events"), |b| {
            b.iter(|| {
                let mut s = EventSniffer::default();
                let mut n = 0u32;
                for p in bytes.chunks(piece.min(bytes.len())) {
                    s.feed(black_box(p), &mut |_| n += 1);
                }
                black_box(n)
            })
        });
        g.bench_function(format!("{name}/raw_names"), |b| {
            b.iter(|| {
                let mut s = RawSniffer::default();
                let mut n = 0u8;
                for p in bytes.chunks(piece.min(bytes.len())) {
                    n |= s.feed(black_box(p));
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

/// What `relay_event` did before it used the zero-copy scanner: the data parsed into a serde
/// `Value`, and a request's id replaced in it and the object written out again.
fn relay_by_value(m: usize, data: &str, out: &mut Vec<u8>) {
    use serde_json::Value;
    let mut rewritten = None;
    if let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(data) {
        let method = obj.get("method").and_then(Value::as_str).unwrap_or("");
        if !method.is_empty() {
            if let Some(id) = obj.get("id").filter(|i| !i.is_null()) {
                let raw = serde_json::to_vec(id).unwrap_or_default();
                obj.insert(
                    "id".into(),
                    Value::String(mcplb::internals::wrap_id(m, &raw)),
                );
                rewritten = serde_json::to_string(&obj).ok();
            }
        }
    }
    let data = rewritten.as_deref().unwrap_or(data);
    out.extend_from_slice(b"event: message\n");
    protocol::sse::write_data(out, data.as_bytes());
}

fn bench_relay(c: &mut Criterion) {
    let answer = |pad: usize| {
        format!(
            r#"{{"jsonrpc": "2.0", "id": 7, "result": {{"content": [{{"type": "text", "text": "{}"}}]}}}}"#,
            "x".repeat(pad)
        )
    };
    let events = [
        ("progress", r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p-42","progress":1,"total":3}}"#.to_owned()),
        ("answer_200B", answer(200)),
        ("answer_16KiB", answer(16 * 1024)),
        ("server_request", r#"{"jsonrpc":"2.0","id":3,"method":"elicitation/create","params":{"message":"Your name?","requestedSchema":{"type":"object","properties":{"name":{"type":"string"}}}}}"#.to_owned()),
    ];
    let mut g = c.benchmark_group("vs_relay_event");
    let mut out = Vec::with_capacity(64 * 1024);
    for (name, data) in &events {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        mcplb::internals::relay_event(2, data, &mut a);
        relay_by_value(2, data, &mut b);
        if *name != "server_request" {
            // Anything but a request goes as it came, either way.
            assert_eq!(a, b, "{name}");
        }
        g.bench_function(format!("{name}/scanner"), |bench| {
            bench.iter(|| {
                out.clear();
                mcplb::internals::relay_event(2, black_box(data), &mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("{name}/serde_value"), |bench| {
            bench.iter(|| {
                out.clear();
                relay_by_value(2, black_box(data), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_outcome,
    bench_sse,
    bench_sniff,
    bench_relay
);
criterion_main!(benches);
