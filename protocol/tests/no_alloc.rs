//! The success path of `parse_message` must not touch the heap for messages
//! without escapes: counted with a global allocator that tallies per thread.

#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mcplb_protocol::{parse_message, MessageKind, SseBoundary};

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; the only
// extra work is bumping a const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn parse_success_path_does_not_allocate() {
    let messages: [&[u8]; 5] = [
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris","days":[1,2,3],"deep":{"a":[{"b":null}]}},"_meta":{"progressToken":"tok-1","io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        br#"{"jsonrpc":"2.0","id":"abc","result":{"content":[{"type":"text","text":"hi"}]}}"#,
        br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":0.5}}"#,
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#,
        // Escapes in values (not keys) are validated but never decoded.
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\"b","arguments":{"t":"\u00e9\n"}}}"#,
    ];
    for msg in messages {
        let n = allocations_during(|| {
            let env = parse_message(msg).unwrap();
            assert!(env.batch_len > 0 || env.kind != MessageKind::Batch);
            if let Some(m) = env.method {
                assert!(!m.eq_str(""));
            }
        });
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(msg));
    }
    // eq_str on an escaped value compares without allocating too.
    let msg = br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call"}"#;
    let n = allocations_during(|| {
        let env = parse_message(msg).unwrap();
        assert!(env.method.unwrap().eq_str("tools/call"));
    });
    assert_eq!(n, 0);
}

#[test]
fn error_path_does_not_allocate_either() {
    let n = allocations_during(|| {
        let err = parse_message(br#"{"jsonrpc":"2.0","id":1,"method":5}"#).unwrap_err();
        assert_eq!(err.jsonrpc_code(), -32600);
        let deep = [b'['; 200];
        assert!(parse_message(&deep).is_err());
    });
    assert_eq!(n, 0);
}

#[test]
fn sse_boundary_does_not_allocate() {
    let mut b = SseBoundary::new();
    let n = allocations_during(|| {
        assert_eq!(
            b.feed(b"event: message\ndata: {}\n\n: keepalive\n\ndata: x\r\n\r\n"),
            2
        );
    });
    assert_eq!(n, 0);
}
