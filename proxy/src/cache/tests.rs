//! The cache's decisions: keys, lifetimes, notifications, the spliced answer, the store.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::store::{Entry, Moved, Store, ENTRY_OVERHEAD};
use super::*;

fn cfg() -> CacheConfig {
    CacheConfig {
        max_bytes: 1 << 20,
        default_ttl: Duration::ZERO,
        default_scope: Scope::Private,
        share_sessions: false,
        tools: vec![ratelimit::Glob::new("lookup_*".to_string())],
        tool_ttl: Duration::from_secs(30),
        tool_scope: Scope::Private,
    }
}

fn who<'a>(identity: &'a str, in_session: bool) -> Requester<'a> {
    Requester {
        identity,
        version: b"2025-06-18",
        in_session,
        via: 0,
        declared: None,
    }
}

fn key(kind: Kind, parts: &KeyParts<'_>, w: &Requester<'_>, scope: Scope) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    write_key(&mut out, kind, parts, w, scope).then_some(out)
}

#[test]
fn request_parts_read_what_shapes_the_answer() {
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"info://a","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":5}}}"#;
    let p = request_parts(body).unwrap();
    assert_eq!(p.uri, Some(&br#""info://a""#[..]));
    assert_eq!(p.meta_version, Some(&br#""2026-07-28""#[..]));
    assert_eq!(p.cursor, None);
    let call = br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"lookup_a","arguments":{"k":1}}}"#;
    let p = request_parts(call).unwrap();
    assert_eq!(p.name, Some(&br#""lookup_a""#[..]));
    assert_eq!(p.arguments, Some(&br#"{"k":1}"#[..]));
    let list = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"abc"}}"#;
    assert_eq!(request_parts(list).unwrap().cursor, Some(&br#""abc""#[..]));
    let bare = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    assert_eq!(request_parts(bare).unwrap(), KeyParts::default());
}

#[test]
fn what_the_client_declared_is_in_the_key() {
    let list = |caps: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{caps},"io.modelcontextprotocol/clientInfo":{{"name":"c"}}}}}}}}"#
        )
    };
    let (plain, asks) = (list("{}"), list(r#"{"elicitation":{}}"#));
    let p = request_parts(plain.as_bytes()).unwrap();
    assert_eq!(p.capabilities, Some(&b"{}"[..]));
    assert_eq!(p.client_info, Some(&br#"{"name":"c"}"#[..]));
    let q = request_parts(asks.as_bytes()).unwrap();
    let w = who("", false);
    assert_ne!(
        key(Kind::ToolsList, &p, &w, Scope::Public),
        key(Kind::ToolsList, &q, &w, Scope::Public),
        "two declarations, two entries"
    );
    assert_eq!(
        key(Kind::ToolsList, &p, &w, Scope::Public),
        key(
            Kind::ToolsList,
            &request_parts(plain.as_bytes()).unwrap(),
            &w,
            Scope::Public
        )
    );
    // A 2025-era client of mcplb's own session: what it declared at initialize.
    let bare = KeyParts::default();
    let mut a = who("", false);
    a.declared = Some((b"{}", None));
    let mut b = who("", false);
    b.declared = Some((br#"{"elicitation":{}}"#, None));
    assert_ne!(
        key(Kind::ToolsList, &bare, &a, Scope::Public),
        key(Kind::ToolsList, &bare, &b, Scope::Public)
    );
    assert_ne!(
        key(Kind::ToolsList, &bare, &a, Scope::Public),
        key(Kind::ToolsList, &bare, &w, Scope::Public)
    );
}

#[test]
fn retries_with_input_and_ambiguous_bodies_are_never_cached() {
    let retry = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"requestState":"s","inputResponses":{}}}"#;
    assert!(request_parts(retry).is_none());
    let input = br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","inputResponses":{}}}"#;
    assert!(request_parts(input).is_none());
    let twice = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_a","name":"rm"}}"#;
    assert!(
        request_parts(twice).is_none(),
        "a repeated key is read two ways"
    );
    assert!(request_parts(b"[{}]").is_none());
    assert!(
        request_parts(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":["c"]}"#)
            .is_none()
    );
}

#[test]
fn tool_calls_need_the_config_and_both_annotations() {
    let c = cfg();
    assert!(eligible(&c, Kind::ToolsList, None, |_| false));
    assert!(eligible(&c, Kind::ToolsCall, Some("lookup_x"), |_| true));
    assert!(
        !eligible(&c, Kind::ToolsCall, Some("lookup_x"), |_| false),
        "not annotated"
    );
    assert!(
        !eligible(&c, Kind::ToolsCall, Some("delete_x"), |_| true),
        "not named"
    );
    assert!(!eligible(&c, Kind::ToolsCall, None, |_| true));
}

#[test]
fn hints_and_lifetimes() {
    let c = cfg();
    let public = hints(
        br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"ttlMs":5000,"cacheScope":"public"}}"#,
    )
    .unwrap();
    assert_eq!(public.ttl_ms, Some(5000));
    assert_eq!(public.scope, Some(Scope::Public));
    assert_eq!(
        lifetime(&c, Kind::ToolsList, &public, false, false),
        Some((Duration::from_secs(5), Scope::Public))
    );
    // In a backend session: an explicit public is shared, nothing else (unless configured).
    assert!(lifetime(&c, Kind::ToolsList, &public, true, false).is_some());
    let private =
        hints(br#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":5000,"cacheScope":"private"}}"#)
            .unwrap();
    assert!(
        lifetime(&c, Kind::ToolsList, &private, false, false).is_none(),
        "no identity"
    );
    assert_eq!(
        lifetime(&c, Kind::ToolsList, &private, false, true),
        Some((Duration::from_secs(5), Scope::Private))
    );
    assert!(lifetime(&c, Kind::ToolsList, &private, true, true).is_none());
    let shared = CacheConfig {
        share_sessions: true,
        ..cfg()
    };
    assert!(lifetime(&shared, Kind::ToolsList, &private, true, true).is_some());
    // No hints: the group's default (off by default).
    let none = hints(br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#).unwrap();
    assert!(lifetime(&c, Kind::ToolsList, &none, false, true).is_none());
    let defaulted = CacheConfig {
        default_ttl: Duration::from_secs(9),
        default_scope: Scope::Public,
        ..cfg()
    };
    assert_eq!(
        lifetime(&defaulted, Kind::ToolsList, &none, false, false),
        Some((Duration::from_secs(9), Scope::Public))
    );
    // Errors, incomplete results, failed tools and zero lifetimes are not kept.
    assert!(hints(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#).is_none());
    let more = hints(br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","ttlMs":9000,"cacheScope":"public"}}"#).unwrap();
    assert!(lifetime(&defaulted, Kind::ToolsList, &more, false, true).is_none());
    let zero =
        hints(br#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":0,"cacheScope":"public"}}"#).unwrap();
    assert!(lifetime(&defaulted, Kind::ToolsList, &zero, false, true).is_none());
    let failed =
        hints(br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[]}}"#).unwrap();
    assert!(lifetime(&c, Kind::ToolsCall, &failed, false, true).is_none());
    let ok = hints(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#).unwrap();
    assert_eq!(
        lifetime(&c, Kind::ToolsCall, &ok, false, true),
        Some((Duration::from_secs(30), Scope::Private))
    );
    assert!(
        lifetime(&c, Kind::ToolsCall, &ok, true, true).is_none(),
        "in a session"
    );
    assert!(lifetime(&shared, Kind::ToolsCall, &ok, true, true).is_some());
    let huge =
        hints(br#"{"jsonrpc":"2.0","id":1,"result":{"ttlMs":999999999999,"cacheScope":"public"}}"#)
            .unwrap();
    assert_eq!(
        lifetime(&c, Kind::ToolsList, &huge, false, true).unwrap().0,
        MAX_TTL
    );
}

#[test]
fn annotations_name_the_cacheable_tools() {
    let h = hints(
        br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
        {"name":"a","annotations":{"readOnlyHint":true,"idempotentHint":true}},
        {"name":"b","annotations":{"readOnlyHint":true}},
        {"name":"c"},
        {"name":"d","annotations":{"readOnlyHint":true,"idempotentHint":false}}]}}"#,
    )
    .unwrap();
    assert_eq!(h.read_only_tools, vec!["a".to_string()]);
}

#[test]
fn the_answer_carries_the_requests_own_id() {
    let body =
        b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[]}}\n\n";
    assert!(response_message(body, true, b"8").is_none());
    let m = response_message(body, true, b"7").unwrap();
    assert_eq!(&m.bytes[m.id.clone()], b"7");
    let mut out = Vec::new();
    write_answer(&mut out, &m.bytes, m.id.clone(), br#""abc""#, false, false);
    let text = String::from_utf8(out).unwrap();
    let (head, json) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-type: application/json"));
    assert!(head.contains(&format!("content-length: {}", json.len())));
    assert_eq!(
        json,
        r#"{"jsonrpc":"2.0","id":"abc","result":{"tools":[]}}"#
    );
    let mut out = Vec::new();
    write_answer(&mut out, &m.bytes, m.id, b"12", true, true);
    let text = String::from_utf8(out).unwrap();
    let (head, sse) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("text/event-stream") && head.contains("connection: close"));
    assert!(head.contains(&format!("content-length: {}", sse.len())));
    assert_eq!(
        sse,
        "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":12,\"result\":{\"tools\":[]}}\n\n"
    );
    // A JSON body, and a pretty-printed one that could not be one SSE line.
    let json = br#" {"jsonrpc":"2.0","id":"q","result":{}} "#;
    assert!(response_message(json, false, br#""q""#).is_some());
    assert!(response_message(
        b"{\"jsonrpc\":\"2.0\",\n\"id\":1,\"result\":{}}",
        false,
        b"1"
    )
    .is_none());
    // A request with the same id is not the answer.
    let req = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    assert!(response_message(req, false, b"1").is_none());
}

#[test]
fn accept_chooses_the_framing() {
    assert!(!wants_sse(None));
    assert!(!wants_sse(Some(b"application/json, text/event-stream")));
    assert!(wants_sse(Some(b"text/event-stream")));
    assert!(!wants_sse(Some(b"*/*")));
}

#[test]
fn notifications_move_the_stamps_of_what_they_evict() {
    let slot = group_slot("stamps-test-group");
    let tools = stamp(slot, Kind::ToolsList);
    let read = stamp(slot, Kind::ResourcesRead);
    note_changes(slot, TOOLS_CHANGED);
    assert_ne!(stamp(slot, Kind::ToolsList), tools);
    assert_ne!(stamp(slot, Kind::Discover), tools);
    assert_eq!(stamp(slot, Kind::ResourcesRead), read);
    note_changes(slot, RESOURCES_UPDATED);
    assert_ne!(stamp(slot, Kind::ResourcesRead), read);
    assert_eq!(
        notification_name(RESOURCES_UPDATED),
        "notifications/resources/updated"
    );
}

#[test]
fn the_store_expires_follows_stamps_and_stays_in_bounds() {
    let now = Instant::now();
    let mut s = Store::new(8 * (ENTRY_OVERHEAD + 20));
    let entry = |stamp| Entry {
        msg: vec![b'x'; 10].into(),
        id: 0..1,
        expires: now + Duration::from_secs(10),
        stamp,
    };
    let mut m = Moved::default();
    s.put(b"k1".to_vec().into(), entry(1), &mut m);
    assert!(s.get(b"k1", now, 1, &mut m).is_some());
    assert!(
        s.get(b"k1", now, 2, &mut m).is_none(),
        "a change evicted it"
    );
    assert!(s.is_empty());
    s.put(b"k1".to_vec().into(), entry(1), &mut m);
    assert!(
        s.get(b"k1", now + Duration::from_secs(11), 1, &mut m)
            .is_none(),
        "expired"
    );
    assert_eq!(s.bytes(), 0);
    assert_eq!(m.evicted, 2);
    assert_eq!(m.bytes, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Two different requests (or requesters, or scopes) never share a key; a public key does
    /// not depend on the identity; a private key needs one.
    #[test]
    fn keys_tell_requests_apart(
        a in proptest::collection::vec(proptest::option::of("[a-z\"{}:,0-9]{0,6}"), 7),
        b in proptest::collection::vec(proptest::option::of("[a-z\"{}:,0-9]{0,6}"), 7),
        ia in "[a-c]{0,2}", ib in "[a-c]{0,2}",
        ka in 0usize..7, kb in 0usize..7, sa in any::<bool>(), sb in any::<bool>(),
    ) {
        let kinds = [Kind::ToolsList, Kind::PromptsList, Kind::ResourcesList,
            Kind::TemplatesList, Kind::ResourcesRead, Kind::Discover, Kind::ToolsCall];
        fn parts(v: &[Option<String>]) -> KeyParts<'_> {
            KeyParts {
                cursor: v[0].as_deref().map(str::as_bytes),
                uri: v[1].as_deref().map(str::as_bytes),
                name: v[2].as_deref().map(str::as_bytes),
                arguments: v[3].as_deref().map(str::as_bytes),
                meta_version: v[4].as_deref().map(str::as_bytes),
                capabilities: v[5].as_deref().map(str::as_bytes),
                client_info: v[6].as_deref().map(str::as_bytes),
            }
        }
        let (pa, pb) = (parts(&a), parts(&b));
        for (scope_a, scope_b) in [(Scope::Public, Scope::Public), (Scope::Private, Scope::Private), (Scope::Public, Scope::Private)] {
            let x = key(kinds[ka], &pa, &who(&ia, sa), scope_a);
            let y = key(kinds[kb], &pb, &who(&ib, sb), scope_b);
            prop_assert_eq!(x.is_none(), scope_a == Scope::Private && ia.is_empty());
            if let (Some(x), Some(y)) = (x, y) {
                let same_identity = scope_a == Scope::Public || ia == ib;
                let same = ka == kb && a == b && sa == sb && scope_a == scope_b && same_identity;
                prop_assert_eq!(x == y, same);
            }
        }
    }

    /// A change notification is found however the stream is cut into pieces, with LF or CRLF
    /// lines, among events that only mention notification names (an answer whose tool
    /// describes one, a log message quoting one, a large answer spread over many pieces): those
    /// evict nothing.
    #[test]
    fn the_sniffer_finds_notifications_not_mentions_across_any_cuts(
        which in 0usize..4, crlf in any::<bool>(), pad in 0usize..6000,
        cuts in proptest::collection::vec(0usize..20_000, 0..8),
    ) {
        let (name, bit) = NOTIFICATIONS[which];
        let name = std::str::from_utf8(name).unwrap();
        let mention = format!("Sends {name} and notifications/tools/list_changed when it runs.");
        let answer = format!(
            "event: message\nid: 7\ndata: {{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{{\"tools\":[{{\"name\":\"t\",\"description\":\"{mention}{}\"}}]}}}}\n\n",
            "x".repeat(pad)
        );
        let log = format!(
            ": keepalive\n\ndata: {{\"method\":\"notifications/message\",\"params\":{{\"data\":\"{mention}\"}},\"jsonrpc\":\"2.0\"}}\n\n"
        );
        let params = if bit == RESOURCES_UPDATED { r#","params":{"uri":"res://a"}"# } else { "" };
        let note = format!("event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"{name}\"{params}}}\n\n");
        let mut stream = format!("{answer}{log}{note}{answer}");
        if crlf {
            stream = stream.replace('\n', "\r\n");
        }
        let stream = stream.into_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut s = EventSniffer::default();
        let mut seen = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([stream.len()]) {
            s.feed(&stream[at..c], &mut |ch| seen.push(match ch {
                Change::Bits(b) => (b, None),
                Change::Updated(u) => (RESOURCES_UPDATED, Some(u.0.to_vec())),
            }));
            at = c;
        }
        let uri = (bit == RESOURCES_UPDATED).then(|| b"res://a".to_vec());
        prop_assert_eq!(seen, vec![(bit, uri)]);
    }

    /// The store never holds more than its bound, and its byte count is what it holds.
    #[test]
    fn the_store_stays_within_max_bytes(
        ops in proptest::collection::vec((0u8..20, 0usize..400, any::<bool>()), 1..200),
    ) {
        let now = Instant::now();
        let max = 4 * 1024;
        let mut s = Store::new(max);
        let mut m = Moved::default();
        for (k, size, read) in ops {
            let key = vec![k];
            if read {
                let _ = s.get(&key, now, 0, &mut m);
            } else {
                s.put(key.into(), Entry {
                    msg: vec![b'x'; size].into(),
                    id: 0..1,
                    expires: now + Duration::from_secs(1),
                    stamp: 0,
                }, &mut m);
            }
            prop_assert!(s.bytes() <= max);
            prop_assert_eq!(s.bytes() as i64, m.bytes);
        }
    }
}

/// What an [`EventSniffer`] reports for `pieces` fed in turn.
fn sniffed(pieces: &[&[u8]]) -> Vec<(u8, Option<Vec<u8>>)> {
    let mut s = EventSniffer::default();
    let mut seen = Vec::new();
    for p in pieces {
        s.feed(p, &mut |ch| {
            seen.push(match ch {
                Change::Bits(b) => (b, None),
                Change::Updated(u) => (RESOURCES_UPDATED, Some(u.decoded().unwrap().to_vec())),
            })
        });
    }
    seen
}

#[test]
fn resources_updated_names_its_resource_in_whole_or_split_events() {
    let note = |uri: &str| {
        format!(
            "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/resources/updated\",\"params\":{{\"uri\":\"{uri}\"}}}}\n\n"
        )
    };
    let updated = |u: &str| (RESOURCES_UPDATED, Some(u.as_bytes().to_vec()));
    let two = format!("{}{}", note("res://a"), note("res://b"));
    assert_eq!(
        sniffed(&[two.as_bytes()]),
        vec![updated("res://a"), updated("res://b")]
    );
    // Split inside the name, inside the URI, between the two line ends.
    for cut in [40, 75, two.len() / 2 - 1, two.len() / 2 + 3] {
        let (x, y) = two.as_bytes().split_at(cut);
        assert_eq!(
            sniffed(&[x, y]),
            vec![updated("res://a"), updated("res://b")],
            "cut at {cut}"
        );
    }
    // CRLF lines, a CR between two pieces, an escaped URI.
    let crlf = note("res://d").replace('\n', "\r\n");
    let (x, y) = crlf.as_bytes().split_at(crlf.len() - 1);
    assert_eq!(sniffed(&[x, y]), vec![updated("res://d")]);
    assert_eq!(
        sniffed(&[note("res:\\/\\/e").as_bytes()]),
        vec![updated("res://e")]
    );
    // Without a URI: every read.
    let bare = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/resources/updated\"}\n\n";
    assert_eq!(sniffed(&[bare]), vec![(RESOURCES_UPDATED, None)]);
    // Data over two lines; params before the method; an event not ended yet.
    let two_lines =
        "data: {\"jsonrpc\":\"2.0\",\ndata: \"method\":\"notifications/prompts/list_changed\"}\n\n";
    assert_eq!(
        sniffed(&[two_lines.as_bytes()]),
        vec![(PROMPTS_CHANGED, None)]
    );
    let params_first = "data: {\"params\":{},\"method\":\"notifications/tools/list_changed\",\"jsonrpc\":\"2.0\"}\n\n";
    assert_eq!(
        sniffed(&[params_first.as_bytes()]),
        vec![(TOOLS_CHANGED, None)]
    );
    assert_eq!(
        sniffed(&[&params_first.as_bytes()[..params_first.len() - 1]]),
        vec![]
    );
}

#[test]
fn a_streams_first_event_after_a_byte_order_mark_evicts() {
    // The event-stream rules skip a BOM at the start of a stream: a client reads the
    // notification after it, so the cache must too (before protocol::sse, it missed it).
    let note = b"\xEF\xBB\xBFdata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n";
    assert_eq!(sniffed(&[note]), vec![(TOOLS_CHANGED, None)]);
    let (x, y) = note.split_at(2);
    assert_eq!(sniffed(&[x, y]), vec![(TOOLS_CHANGED, None)]);
}

#[test]
fn only_notifications_of_those_methods_evict() {
    let evicts = |event: &str| !sniffed(&[event.as_bytes()]).is_empty();
    // A request (it has an id), an answer, a notification of another method, a text.
    assert!(!evicts(
        "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"notifications/tools/list_changed\"}\n\n"
    ));
    assert!(!evicts(
        "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"text\":\"notifications/tools/list_changed\"}}\n\n"
    ));
    assert!(!evicts(
        "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"message\":\"notifications/tools/list_changed\"}}\n\n"
    ));
    assert!(!evicts("data: notifications/tools/list_changed\n\n"));
    // Not JSON-RPC 2.0: no eviction (the parse is the authority). Decided: MCP requires
    // `"jsonrpc": "2.0"` on every message, the official SDKs (Python, TypeScript) always send
    // it and refuse a message without it, so a client never acts on such a "notification";
    // mcplb reads it as the client would (`message_changes`, also for a virtual server's
    // member streams) rather than guess at a broken server.
    assert!(!evicts(
        "data: {\"method\":\"notifications/tools/list_changed\"}\n\n"
    ));
    assert!(!evicts(
        "data: {\"jsonrpc\":\"1.0\",\"method\":\"notifications/tools/list_changed\"}\n\n"
    ));
    assert!(evicts(
        "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n"
    ));
    // A line that is no SSE field (ignored by a client) does not make the data an answer.
    assert!(evicts(
        "data: {\"jsonrpc\":\"2.0\",\n\"id\":1\ndata: \"method\":\"notifications/tools/list_changed\"}\n\n"
    ));
    // A batch (2025-03-26) is searched for the names.
    assert!(evicts(
        "data: [{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}]\n\n"
    ));
    // An undecided event larger than MAX_NOTE over several pieces: the names in its bytes.
    let big = format!(
        "data: {{\"params\":{{\"pad\":\"{}\"}},\"method\":\"notifications/tools/list_changed\",\"jsonrpc\":\"2.0\"}}\n\n",
        "x".repeat(MAX_NOTE)
    );
    let (x, y) = big.as_bytes().split_at(100);
    assert_eq!(sniffed(&[x, y]), vec![(TOOLS_CHANGED, None)]);
}

#[test]
fn the_first_keys_tell_what_an_event_is_not() {
    for (data, v) in [
        (r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, Verdict::Not),
        (r#"{ "jsonrpc" : "2.0" , "id" : 1"#, Verdict::Not),
        (r#"{"result":{"tools":["#, Verdict::Not),
        (
            r#"{"jsonrpc":"2.0","method":"notifications/progress","#,
            Verdict::Not,
        ),
        (r#"{"method":"tools/call","#, Verdict::Not),
        (r#""text""#, Verdict::Not),
        (
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            Verdict::Maybe,
        ),
        (r#"{"jsonrpc":"2.0","meth"#, Verdict::Maybe),
        (r#"{"params":{},"method":"x"}"#, Verdict::Maybe),
        (
            r#"{"jsonrpc":"2.0","method":"notifications\/progress"}"#,
            Verdict::Maybe,
        ),
        (r#"[{"jsonrpc":"2.0"}]"#, Verdict::Maybe),
    ] {
        assert_eq!(
            classify(format!("event: message\ndata: {data}").as_bytes()),
            v,
            "{data}"
        );
    }
    assert_eq!(classify(b"event: message\nid: 4"), Verdict::Maybe);
    assert_eq!(classify(b"data:\ndata: {\"id\":1}"), Verdict::Maybe);
    assert_eq!(
        classify(b"data: {\"method\":\"tools/\ndata: call\"}"),
        Verdict::Maybe
    );
    assert_eq!(classify(b"id: 1\r\ndata:{\"result\":1}"), Verdict::Not);
    assert_eq!(classify(b": keepalive\n"), Verdict::Maybe);
}

#[test]
fn a_resource_update_stales_only_that_resources_reads() {
    let slot = group_slot("uri-stamps-test");
    let a = stamp_for(slot, Kind::ResourcesRead, Some(b"\"res://a\""));
    let b = stamp_for(slot, Kind::ResourcesRead, Some(b"\"res://b\""));
    let list = stamp_for(slot, Kind::ResourcesList, None);
    note_uri_updated(slot, b"res://a");
    assert_ne!(
        stamp_for(slot, Kind::ResourcesRead, Some(b"\"res://a\"")),
        a
    );
    // Escapes are read as the notification's text is.
    assert_ne!(
        stamp_for(slot, Kind::ResourcesRead, Some(b"\"res:\\/\\/a\"")),
        a
    );
    assert_eq!(
        stamp_for(slot, Kind::ResourcesRead, Some(b"\"res://b\"")),
        b
    );
    assert_eq!(stamp_for(slot, Kind::ResourcesList, None), list);
    // An update whose resource could not be told stales every read.
    note_changes(slot, RESOURCES_UPDATED);
    assert_ne!(
        stamp_for(slot, Kind::ResourcesRead, Some(b"\"res://b\"")),
        b
    );
}
