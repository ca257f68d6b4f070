//! Golden fixtures for the JSON-RPC envelope parser: one case per shape the
//! proxy must tell apart, and every way a frame can be broken.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcplb_protocol::{
    parse_message, parse_message_with_depth, FrameErrorKind as K, MessageKind, MAX_DEPTH,
};

const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris","days":[1,2,3]},"_meta":{"progressToken":"tok-1","io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

fn kind_of(buf: &[u8]) -> K {
    match parse_message(buf) {
        Ok(env) => panic!("expected an error, got {env:?}"),
        Err(e) => e.kind,
    }
}

#[test]
fn request_with_all_fields() {
    let env = parse_message(TOOLS_CALL.as_bytes()).unwrap();
    assert_eq!(env.kind, MessageKind::Request);
    assert_eq!(env.id, Some(&b"7"[..]));
    assert!(env.method.unwrap().eq_str("tools/call"));
    assert_eq!(env.name.unwrap().raw(), b"get_weather");
    assert_eq!(env.progress_token, Some(&br#""tok-1""#[..]));
    assert_eq!(
        env.arguments,
        Some(&br#"{"city":"Paris","days":[1,2,3]}"#[..])
    );
    assert_eq!(env.protocol_version.unwrap().decode(), "2026-07-28");
    assert_eq!(env.uri, None);
    assert_eq!(env.batch_len, 0);
    assert!(!env.has_result && !env.has_error);
}

#[test]
fn arguments_are_raw_and_the_last_one_wins() {
    let env = parse_message(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments": [1, "a"] ,"name":"x"}}"#,
    )
    .unwrap();
    assert_eq!(env.arguments, Some(&br#"[1, "a"]"#[..]));
    let env = parse_message(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":1,"arguments":null}}"#,
    )
    .unwrap();
    assert_eq!(env.arguments, Some(&b"null"[..]));
    let env = parse_message(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"arguments":2}}}"#,
    )
    .unwrap();
    assert_eq!(env.arguments, None);
}

#[test]
fn string_id_keeps_quotes_and_type() {
    let env = parse_message(br#"{"jsonrpc":"2.0","id":"abc","method":"ping"}"#).unwrap();
    assert_eq!(env.id, Some(&br#""abc""#[..]));
    let env = parse_message(br#"{"jsonrpc":"2.0","id":-12,"method":"ping"}"#).unwrap();
    assert_eq!(env.id, Some(&b"-12"[..]));
}

#[test]
fn keys_in_any_order_and_whitespace() {
    let msg = b" \r\n{ \"params\" : { \"_meta\": {\"progressToken\" : 5 }, \"uri\":\"file:///a\" } ,\n \"method\":\"resources/read\", \"id\" : \"x\", \"jsonrpc\":\"2.0\" }\t\n";
    let env = parse_message(msg).unwrap();
    assert_eq!(env.kind, MessageKind::Request);
    assert_eq!(env.id, Some(&br#""x""#[..]));
    assert_eq!(env.uri.unwrap().decode(), "file:///a");
    assert_eq!(env.progress_token, Some(&b"5"[..]));
}

#[test]
fn notification() {
    let env = parse_message(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
    assert_eq!(env.kind, MessageKind::Notification);
    assert_eq!(env.id, None);
    let env = parse_message(
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
    )
    .unwrap();
    assert_eq!(env.kind, MessageKind::Notification);
}

#[test]
fn responses() {
    let env = parse_message(br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#).unwrap();
    assert_eq!(env.kind, MessageKind::Response);
    assert!(env.has_result && !env.has_error);
    let env = parse_message(
        br#"{"jsonrpc":"2.0","id":"q","error":{"code":-32601,"message":"Method not found"}}"#,
    )
    .unwrap();
    assert_eq!(env.kind, MessageKind::Response);
    assert!(env.has_error && !env.has_result);
    let env =
        parse_message(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#)
            .unwrap();
    assert_eq!(env.id, Some(&b"null"[..]));
    assert_eq!(env.kind, MessageKind::Response);
}

#[test]
fn tool_errors_inside_results() {
    let failed = br#"{"jsonrpc":"2.0","id":4,"result":{"content":[{"type":"text","text":"bad \"isError\": true"}],"isError":true}}"#;
    let env = parse_message(failed).unwrap();
    assert!(env.has_result && env.tool_error);
    for ok in [
        &br#"{"jsonrpc":"2.0","id":4,"result":{"content":[],"isError":false}}"#[..],
        br#"{"jsonrpc":"2.0","id":4,"result":{"content":[{"isError":true}]}}"#,
        br#"{"jsonrpc":"2.0","id":4,"result":{"structuredContent":{"isError":true}}}"#,
        br#"{"jsonrpc":"2.0","id":4,"result":{"isError":"true"}}"#,
        br#"{"jsonrpc":"2.0","id":4,"result":[true]}"#,
        br#"{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"m","data":{"isError":true}}}"#,
    ] {
        let env = parse_message(ok).unwrap();
        assert!(!env.tool_error, "{}", String::from_utf8_lossy(ok));
    }
    // An escaped key is the same key.
    let env = parse_message(br#"{"jsonrpc":"2.0","id":4,"result":{"is\u0045rror":true}}"#).unwrap();
    assert!(env.tool_error);
    // The result object still counts towards the nesting limit.
    let deep = br#"{"jsonrpc":"2.0","id":4,"result":{"isError":true}}"#;
    assert_eq!(
        parse_message_with_depth(deep, 1).map_err(|e| e.kind).err(),
        Some(K::TooDeep)
    );
    assert!(parse_message_with_depth(deep, 2).is_ok());
    // A broken value inside the result is still a broken frame.
    assert!(parse_message(br#"{"jsonrpc":"2.0","id":4,"result":{"isError":tru}}"#).is_err());
}

#[test]
fn response_shape_errors() {
    assert_eq!(
        kind_of(br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#),
        K::InvalidShape
    );
    assert_eq!(kind_of(br#"{"jsonrpc":"2.0","result":1}"#), K::InvalidShape);
    assert_eq!(
        kind_of(br#"{"jsonrpc":"2.0","id":null,"result":1}"#),
        K::BadId
    );
    assert_eq!(kind_of(br#"{"jsonrpc":"2.0","id":1}"#), K::InvalidShape);
    assert_eq!(
        kind_of(br#"{"jsonrpc":"2.0","id":1,"method":"a","result":1}"#),
        K::InvalidShape
    );
}

#[test]
fn batch() {
    let env = parse_message(
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, {"jsonrpc":"2.0","method":"n"}]"#,
    )
    .unwrap();
    assert_eq!(env.kind, MessageKind::Batch);
    assert_eq!(env.batch_len, 2);
    assert_eq!(env.id, None);
    assert_eq!(kind_of(b"[]"), K::EmptyBatch);
    assert_eq!(kind_of(b" [ ] "), K::EmptyBatch);
    assert_eq!(
        kind_of(br#"[{"jsonrpc":"2.0","method":"n"}, 1]"#),
        K::NotAnObject
    );
    assert_eq!(kind_of(br#"[{"a":1},]"#), K::Syntax { offset: 9 });
}

#[test]
fn escapes_in_method_and_name() {
    let msg = br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"caf\u00e9 \ud83d\ude00\n"}}"#;
    let env = parse_message(msg).unwrap();
    let method = env.method.unwrap();
    assert!(method.has_escapes());
    assert_eq!(method.raw(), br"tools\/call");
    assert!(method.eq_str("tools/call"));
    assert!(!method.eq_str("tools/cal"));
    assert!(!method.eq_str("tools/calls"));
    assert_eq!(method.decode(), "tools/call");
    let name = env.name.unwrap();
    assert_eq!(name.decode(), "café 😀\n");
    assert!(name.eq_str("café 😀\n"));
}

#[test]
fn escaped_keys_are_matched_decoded() {
    let env = parse_message(br#"{"jsonrpc":"2.0","id":1,"\u006dethod":"ping"}"#).unwrap();
    assert!(env.method.unwrap().eq_str("ping"));
    assert_eq!(
        kind_of(br#"{"jsonrpc":"2.0","id":1,"method":"a","\u006dethod":"b"}"#),
        K::DuplicateKey
    );
}

#[test]
fn duplicate_keys() {
    for msg in [
        r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"a"}"#,
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"a"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{},"params":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":1,"result":2}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"r","params":{"uri":"a","uri":"b"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"r","params":{"_meta":{},"_meta":{}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"r","params":{"_meta":{"progressToken":1,"progressToken":2}}}"#,
    ] {
        assert_eq!(kind_of(msg.as_bytes()), K::DuplicateKey, "{msg}");
    }
    // Keys we do not read may repeat (JSON allows it); nested objects are separate.
    parse_message(br#"{"jsonrpc":"2.0","id":1,"method":"a","x":1,"x":2}"#).unwrap();
    parse_message(
        br#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"arguments":{"name":1,"name":2}}}"#,
    )
    .unwrap();
}

#[test]
fn duplicate_method_keeps_id_for_the_answer() {
    let msg = br#"{"jsonrpc":"2.0","id":"k","method":"a","method":"b"}"#;
    let err = parse_message(msg).unwrap_err();
    assert_eq!(err.id_in(msg), Some(&br#""k""#[..]));
    let msg = br#"{"jsonrpc":"2.0","id":"k","id":"j","method":"a"}"#;
    assert_eq!(parse_message(msg).unwrap_err().id, None);
}

#[test]
fn wrong_types() {
    let cases: &[(&str, K)] = &[
        (r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#, K::BadId),
        (r#"{"jsonrpc":"2.0","id":[1],"method":"a"}"#, K::BadId),
        (r#"{"jsonrpc":"2.0","id":1.5,"method":"a"}"#, K::BadId),
        (r#"{"jsonrpc":"2.0","id":1e3,"method":"a"}"#, K::BadId),
        (r#"{"jsonrpc":"2.0","id":true,"method":"a"}"#, K::BadId),
        (r#"{"jsonrpc":"2.0","id":null,"method":"a"}"#, K::BadId),
        (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, K::BadMethod),
        (r#"{"jsonrpc":"2.0","id":1,"method":null}"#, K::BadMethod),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"a","params":3}"#,
            K::InvalidShape,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"a","params":"x"}"#,
            K::InvalidShape,
        ),
        (r#"{"jsonrpc":"1.0","id":1,"method":"a"}"#, K::BadVersion),
        (r#"{"jsonrpc":2.0,"id":1,"method":"a"}"#, K::BadVersion),
        (r#"{"id":1,"method":"a"}"#, K::BadVersion),
        (r#"{}"#, K::BadVersion),
        (r#"{"jsonrpc":"2.0"}"#, K::InvalidShape),
        (r#"42"#, K::NotAnObject),
        (r#""str""#, K::NotAnObject),
        (r#"null"#, K::NotAnObject),
    ];
    for (msg, want) in cases {
        assert_eq!(kind_of(msg.as_bytes()), *want, "{msg}");
    }
    let env = parse_message(br#"{"jsonrpc":"2.0","id":1,"method":"a","params":[1,2]}"#).unwrap();
    assert_eq!(env.kind, MessageKind::Request);
    // A non-string name is the backend's business (-32602); we simply do not route on it.
    let env =
        parse_message(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#)
            .unwrap();
    assert_eq!(env.name, None);
}

#[test]
fn id_is_reported_for_shape_errors_even_when_it_comes_last() {
    let msg = br#"{"jsonrpc":"1.0","method":"a","id":"late"}"#;
    let err = parse_message(msg).unwrap_err();
    assert_eq!(err.kind, K::BadVersion);
    assert_eq!(err.jsonrpc_code(), -32600);
    assert_eq!(err.id_in(msg), Some(&br#""late""#[..]));
    let msg = br#"{"jsonrpc":"2.0","id":9,"method":"a",}"#;
    let err = parse_message(msg).unwrap_err();
    assert_eq!(err.jsonrpc_code(), -32700);
    assert_eq!(err.id_in(msg), Some(&b"9"[..]));
}

#[test]
fn truncated_at_every_byte_is_an_error() {
    let fixtures = [
        TOOLS_CALL,
        r#"{"jsonrpc":"2.0","id":"a\"b\u00e9","method":"x","params":{"v":[true,false,null,-1.5e+3,0,{}]}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"result":{}}]"#,
    ];
    for msg in fixtures {
        let bytes = msg.as_bytes();
        parse_message(bytes).unwrap();
        for cut in 0..bytes.len() {
            let err = parse_message(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err.kind, K::Empty | K::Truncated | K::InvalidUtf8),
                "cut at {cut}: {err:?}"
            );
            assert_eq!(err.jsonrpc_code(), -32700);
        }
    }
}

#[test]
fn syntax_errors() {
    let cases: &[&str] = &[
        r#"{"jsonrpc":"2.0","id":1,"method":"a"} x"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"a"}{}"#,
        r#"{"jsonrpc":"2.0" "id":1}"#,
        r#"{"jsonrpc":"2.0",,"id":1}"#,
        r#"{'jsonrpc':"2.0"}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":-}"#,
        r#"{"a":.5}"#,
        r#"{"a":1e}"#,
        r#"{"a":tru}"#,
        r#"{"a":nul,"b":1}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12G4"}"#,
        r#"{"a":"\udc00"}"#,
        r#"{"a":"\ud800x"}"#,
        r#"{"a":"\ud800\u0041"}"#,
        "{\"a\":\"tab\there\"}",
        r#"{"a":[1,]}"#,
        r#"{"a":[1 2]}"#,
        r#"{"a":{"b"}}"#,
        r#"{"a":{"b":1]}"#,
        r#"{1:2}"#,
        r#"NaN"#,
    ];
    for msg in cases {
        let err = parse_message(msg.as_bytes()).unwrap_err();
        assert!(
            matches!(err.kind, K::Syntax { .. } | K::Truncated),
            "{msg}: {err:?}"
        );
        assert_eq!(err.jsonrpc_code(), -32700, "{msg}");
    }
    assert_eq!(
        kind_of(br#"{"jsonrpc":"2.0","id":1,"method":"a"} x"#),
        K::Syntax { offset: 38 }
    );
}

#[test]
fn empty_and_whitespace() {
    assert_eq!(kind_of(b""), K::Empty);
    assert_eq!(kind_of(b" \r\n\t"), K::Empty);
}

#[test]
fn invalid_utf8() {
    assert_eq!(
        kind_of(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\xff\"}"),
        K::InvalidUtf8
    );
    assert_eq!(kind_of(b"{\"a\":\"\xed\xa0\x80\"}"), K::InvalidUtf8);
    let env =
        parse_message("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ünï\"}".as_bytes()).unwrap();
    assert_eq!(env.method.unwrap().decode(), "ünï");
}

#[test]
fn deep_nesting_is_too_deep_not_a_crash() {
    let n = 10_000;
    for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
        let msg = format!("{}1{}", open.repeat(n), close.repeat(n));
        assert_eq!(kind_of(msg.as_bytes()), K::TooDeep);
    }
    let inner = format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let msg = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"a","params":{{"x":{inner}}}}}"#);
    let err = parse_message(msg.as_bytes()).unwrap_err();
    assert_eq!(err.kind, K::TooDeep);
    assert_eq!(err.jsonrpc_code(), -32700);
}

#[test]
fn depth_limit_is_exact() {
    // The top-level object is level 1; params is 2; MAX_DEPTH - 2 more arrays fit.
    let ok = MAX_DEPTH - 2;
    let msg = |d: usize| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"a","params":{{"x":{}{}}}}}"#,
            "[".repeat(d),
            "]".repeat(d)
        )
    };
    parse_message(msg(ok).as_bytes()).unwrap();
    assert_eq!(kind_of(msg(ok + 1).as_bytes()), K::TooDeep);
    let batch = |d: usize| format!("[{}]", "[".repeat(d - 1) + &"]".repeat(d - 1));
    assert_eq!(kind_of(batch(MAX_DEPTH).as_bytes()), K::NotAnObject);
    assert_eq!(kind_of(batch(MAX_DEPTH + 1).as_bytes()), K::TooDeep);
}

#[test]
fn a_lower_depth_limit_is_exact_too() {
    let msg = |d: usize| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"a","params":{{"x":{}{}}}}}"#,
            "[".repeat(d),
            "]".repeat(d)
        )
    };
    for limit in [3usize, 8, 20] {
        parse_message_with_depth(msg(limit - 2).as_bytes(), limit).unwrap();
        let err = parse_message_with_depth(msg(limit - 1).as_bytes(), limit).unwrap_err();
        assert_eq!(err.kind, K::TooDeep, "limit {limit}");
    }
    // Above MAX_DEPTH the limit is MAX_DEPTH.
    let err = parse_message_with_depth(msg(MAX_DEPTH - 1).as_bytes(), 10_000).unwrap_err();
    assert_eq!(err.kind, K::TooDeep);
}

#[test]
fn huge_string_value_parses() {
    let big = "x".repeat(8 * 1024 * 1024);
    let msg = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{big}","arguments":{{"blob":"{big}"}}}}}}"#
    );
    let env = parse_message(msg.as_bytes()).unwrap();
    assert_eq!(env.name.unwrap().raw().len(), big.len());
    let msg = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"text":"{big}\n\u00e9"}}}}"#);
    assert_eq!(
        parse_message(msg.as_bytes()).unwrap().kind,
        MessageKind::Response
    );
}

#[test]
fn errors_have_codes_messages_and_display() {
    let err = parse_message(b"{").unwrap_err();
    assert_eq!(err.kind, K::Truncated);
    assert_eq!(err.jsonrpc_code(), -32700);
    assert!(!err.message().is_empty());
    assert!(!err.to_string().is_empty());
    let err = parse_message(br#"{"jsonrpc":"2.0"}"#).unwrap_err();
    assert_eq!(err.jsonrpc_code(), -32600);
    let _: &dyn std::error::Error = &err;
}

#[test]
fn meta_traceparent_is_read() {
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","_meta":{{"progressToken":2,"traceparent":"{tp}"}}}}}}"#
    );
    let env = parse_message(body.as_bytes()).unwrap();
    assert_eq!(env.traceparent.unwrap().raw_str(), tp);
    assert_eq!(env.progress_token, Some(&b"2"[..]));
    // Not a string: no trace context, and the message is still valid.
    let env = parse_message(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"traceparent":5}}}"#,
    )
    .unwrap();
    assert!(env.traceparent.is_none());
}

#[test]
fn response_error_codes() {
    use mcplb_protocol::response_error_code as code;
    assert_eq!(
        code(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#),
        Some(-32601)
    );
    assert_eq!(
        code(br#"{"id":"a","error":{"message":"x}","data":{"code":1},"code": 42 }}"#),
        Some(42)
    );
    assert_eq!(
        code(br#"{"jsonrpc":"2.0","id":1,"result":{"code":-1}}"#),
        None
    );
    assert_eq!(
        code(br#"{"jsonrpc":"2.0","id":1,"error":{"message":"no code"}}"#),
        None
    );
    assert_eq!(code(br#"{"error":{"code":"x"}}"#), None);
    assert_eq!(code(b"{"), None);
}
