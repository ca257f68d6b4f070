//! Virtual servers against a real `mcplb` and real mock members over loopback: merged lists
//! with prefixes, filters, renames and overrides; calls routed by name; unknown and filtered
//! tools answered by mcplb with nothing sent to a member; progress streamed; the stateless
//! form; a member that stops (fail-open and fail-closed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// Three mock members (`a`, `b`, `c`) and a virtual server over them at `/mcp`.
fn setup() -> (Vec<MockServer>, String) {
    let mocks: Vec<MockServer> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            mock_with(MockConfig {
                name: n.to_string(),
                stateless: *n == "c",
                ..Default::default()
            })
        })
        .collect();
    let groups: String = mocks
        .iter()
        .zip(["a", "b", "c"])
        .map(|(m, n)| {
            format!(
                "[[servers]]\nname = \"{n}\"\npath = \"/{n}\"\nbackends = [\"{}\"]\n\
                 [servers.health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n\
                 unhealthy_threshold = 1\nhealthy_threshold = 1\n\n",
                m.url()
            )
        })
        .collect();
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n{groups}\
         [[servers]]\nname = \"work\"\npath = \"/mcp\"\n\
         members = [\n  {{ server = \"a\" }},\n  \
         {{ server = \"b\", prefix = \"bee\", tools = [\"whoami\", \"echo\", \"progress\"], \
            rename = {{ echo = \"say\" }}, overrides = {{ echo = {{ title = \"Say it\" }} }} }},\n  \
         {{ server = \"c\", deny_tools = [\"slow\", \"big\", \"fail\", \"tool_error\", \"wrong_id\"] }},\n]\n"
    );
    (mocks, config)
}

fn tool_names(r: &mcplb::demo::Response) -> Vec<String> {
    let v = r.json().unwrap();
    v["result"]["tools"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn call(c: &mut HttpClient, sid: Option<&str>, id: u64, tool: &str) -> mcplb::demo::Response {
    c.mcp(
        "/mcp",
        sid,
        &rpc(
            id,
            "tools/call",
            json!({"name": tool, "arguments": {"x": 1}}),
        ),
    )
    .unwrap()
}

fn text(r: &mcplb::demo::Response) -> String {
    let v = r.json().unwrap();
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {v}"))
        .to_string()
}

#[test]
fn lists_merge_and_calls_route_in_a_session() {
    for driver in DRIVERS {
        let (mocks, config) = setup();
        let proxy = start_proxy(&config, driver);
        let mut c = HttpClient::connect(proxy.addr).unwrap();
        // The merged initialize (a session of its own, left unused).
        let init = initialize(&mut c, 9);
        assert_eq!(init.status, 200, "{}", String::from_utf8_lossy(&init.body));
        let v = init.json().unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["result"]["capabilities"]["tools"]["listChanged"], true);
        let (sid, name) = init_session(&mut c);
        assert_eq!(name, "work");

        let list = c
            .mcp("/mcp", Some(&sid), &rpc(2, "tools/list", json!({})))
            .unwrap();
        assert_eq!(list.status, 200);
        let names = tool_names(&list);
        for want in [
            "a_echo",
            "a_whoami",
            "a_slow",
            "bee_whoami",
            "bee_say",
            "bee_progress",
            "c_echo",
            "c_whoami",
            "c_progress",
        ] {
            assert!(names.contains(&want.to_string()), "{want} not in {names:?}");
        }
        let tools = list.json().unwrap()["result"]["tools"].clone();
        let say = tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "bee_say")
            .unwrap();
        assert_eq!(say["title"], "Say it");
        assert_eq!(say["description"], "Returns its arguments as text.");
        for hidden in ["bee_echo", "bee_slow", "c_slow", "c_big", "echo", "whoami"] {
            assert!(
                !names.contains(&hidden.to_string()),
                "{hidden} in {names:?}"
            );
        }

        // Routed by name, to the right member, under its own name (members a and b refuse
        // requests without a session of theirs: the virtual session carries them).
        for (tool, who) in [("a_whoami", "a"), ("bee_whoami", "b"), ("c_whoami", "c")] {
            let r = call(&mut c, Some(&sid), 3, tool);
            assert_eq!(r.status, 200);
            assert_eq!(text(&r), who, "{tool}");
            assert_eq!(r.json().unwrap()["id"], 3);
        }
        let r = call(&mut c, Some(&sid), 4, "bee_say");
        assert_eq!(text(&r), "{\"x\":1}");
        assert_eq!(mocks[1].tool_calls("echo"), 1);

        // Unknown and filtered tools: the spec's answer, with the request's id, and nothing
        // reaches a member.
        let before: u64 = mocks.iter().map(|m| m.tool_calls("slow")).sum();
        for (id, tool) in [(5, "c_slow"), (6, "bee_slow"), (7, "nope"), (8, "a_nope")] {
            let r = call(&mut c, Some(&sid), id, tool);
            assert_eq!(r.status, 200);
            let v = r.json().unwrap();
            assert_eq!(v["id"], id);
            assert_eq!(v["error"]["code"], -32602, "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(tool),
                "{v}"
            );
        }
        let after: u64 = mocks.iter().map(|m| m.tool_calls("slow")).sum();
        assert_eq!(before, after);

        // Progress streams through, event by event, before the answer.
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &rpc(
                    9,
                    "tools/call",
                    json!({"name": "bee_progress", "_meta": {"progressToken": "tok"}}),
                ),
            )
            .unwrap();
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert_eq!(progress_events(&r), 3);
        let first = r.events.first().unwrap().0;
        let last = r.events.last().unwrap().0;
        assert!(last > first, "events arrived together");
        assert_eq!(text(&r), "progress done");
        assert!(r.events[0].1.contains("\"tok\""));

        // ping is answered by mcplb; unknown methods get -32601.
        let p = c
            .mcp("/mcp", Some(&sid), &rpc(10, "ping", json!({})))
            .unwrap();
        assert_eq!(
            p.json().unwrap(),
            json!({"jsonrpc": "2.0", "id": 10, "result": {}})
        );
        let u = c
            .mcp("/mcp", Some(&sid), &rpc(11, "nope/nope", json!({})))
            .unwrap();
        assert_eq!(u.json().unwrap()["error"]["code"], -32601);

        // The GET stream merges the members' own: each stateful member's greeting arrives
        // (the stateless member c offers none).
        let mut g = HttpClient::connect(proxy.addr).unwrap();
        g.send(
            "GET",
            "/mcp",
            &[("accept", "text/event-stream"), ("mcp-session-id", &sid)],
            b"",
        )
        .unwrap();
        g.wait_for(b"hello from a").unwrap();
        g.wait_for(b"hello from b").unwrap();
        drop(g);

        // A session id that does not open is 404, as from a server.
        let r = call(&mut c, Some("bogus"), 12, "a_whoami");
        assert_eq!(r.status, 404);
        // DELETE ends the member sessions.
        let d = c
            .request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"")
            .unwrap();
        assert_eq!(d.status, 200);
        drop(proxy);
        drop(mocks);
    }
}

#[test]
fn stateless_requests_need_no_session() {
    let (mocks, config) = setup();
    // `a` said to be of the 2025 era (the mock serves both): its requests go through the era
    // bridge's sessions; `b` and `c` are found to serve 2026-07-28 and get them as they are.
    let config = config.replacen("name = \"a\"\n", "name = \"a\"\nera = \"2025\"\n", 1);
    let proxy = start_proxy(&config, "auto");
    let mut c = HttpClient::connect(proxy.addr).unwrap();
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    let list = c
        .mcp(
            "/mcp",
            None,
            &rpc(1, "tools/list", json!({"_meta": meta.clone()})),
        )
        .unwrap();
    assert_eq!(list.status, 200, "{}", String::from_utf8_lossy(&list.body));
    let names = tool_names(&list);
    for n in ["a_whoami", "bee_say", "c_whoami"] {
        assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
    }
    for (id, tool, who) in [
        (2, "c_whoami", "c"),
        (3, "a_whoami", "a"),
        (4, "bee_whoami", "b"),
    ] {
        let params = json!({"name": tool, "arguments": {}, "_meta": meta.clone()});
        let r = c.mcp("/mcp", None, &rpc(id, "tools/call", params)).unwrap();
        assert_eq!(text(&r), who);
        assert!(r.header("mcp-session-id").is_none());
        if who == "a" {
            // Made what the 2026-07-28 wire requires (the others answer as they do).
            assert_eq!(r.json().unwrap()["result"]["resultType"], "complete");
        }
    }
    drop(mocks);
}

#[test]
fn a_stopped_member_is_left_out_or_fails_the_request() {
    let (mut mocks, config) = setup();
    let closed = config.replace(
        "{ server = \"a\" }",
        "{ server = \"a\", failure = \"fail_closed\" }",
    );
    let proxy = start_proxy(&config, "auto");
    let strict = start_proxy(&closed, "auto");
    let mut c = HttpClient::connect(proxy.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    let mut s = HttpClient::connect(strict.addr).unwrap();
    let (strict_sid, _) = init_session(&mut s);
    // b stops: its tools leave the list, the others work on.
    mocks.remove(1).stop();
    let list = c
        .mcp("/mcp", Some(&sid), &rpc(2, "tools/list", json!({})))
        .unwrap();
    assert_eq!(list.status, 200);
    let names = tool_names(&list);
    assert!(names.contains(&"a_whoami".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("bee_")), "{names:?}");
    assert_eq!(text(&call(&mut c, Some(&sid), 3, "c_whoami")), "c");
    // With a fail_closed member gone, the request fails.
    mocks.remove(0).stop();
    let r = s
        .mcp("/mcp", Some(&strict_sid), &rpc(4, "tools/list", json!({})))
        .unwrap();
    assert!(r.status >= 500, "{}", r.status);
    assert_eq!(r.json().unwrap()["id"], 4);
}

#[test]
fn an_unlisted_tool_reaches_the_one_member_that_could_own_it() {
    let mocks: Vec<MockServer> = ["a", "b"].iter().map(|n| mock(n)).collect();
    let groups: String = mocks
        .iter()
        .zip(["a", "b"])
        .map(|(m, n)| {
            format!(
                "[[servers]]\nname = \"{n}\"\npath = \"/{n}\"\nbackends = [\"{}\"]\n\n",
                m.url()
            )
        })
        .collect();
    // "never": names carry no prefix. `b` shows only `whoami` and `x_*`.
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n{groups}\
         [[servers]]\nname = \"one\"\npath = \"/one\"\nprefix_mode = \"never\"\n\
         members = [{{ server = \"a\", deny_tools = [\"fail\"] }}]\n\n\
         [[servers]]\nname = \"two\"\npath = \"/two\"\nprefix_mode = \"never\"\n\
         members = [{{ server = \"a\", tools = [\"echo\"] }}, {{ server = \"b\", tools = [\"whoami\", \"x_*\"] }}]\n"
    );
    let proxy = start_proxy(&config, "auto");
    let mut c = HttpClient::connect(proxy.addr).unwrap();
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    let mut ask = |path: &str, id: u64, tool: &str| {
        let params = json!({"name": tool, "arguments": {}, "_meta": meta.clone()});
        let r = c.mcp(path, None, &rpc(id, "tools/call", params)).unwrap();
        r.json().unwrap()
    };
    // One member could own it: the member's own answer comes back (the mock's -32602).
    let v = ask("/one", 1, "not-listed");
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(mocks[0].tool_calls("not-listed"), 1);
    // A name its filter hides: mcplb answers, nothing reaches the member.
    let v = ask("/one", 2, "fail");
    assert_eq!(v["error"]["message"], "Unknown tool: fail", "{v}");
    assert_eq!(mocks[0].tool_calls("fail"), 0);
    // Two members: only `b` admits `x_1`; neither admits `slow`.
    let v = ask("/two", 3, "x_1");
    assert_eq!(v["id"], 3, "{v}");
    assert_eq!(mocks[1].tool_calls("x_1"), 1);
    let v = ask("/two", 4, "slow");
    assert_eq!(v["error"]["message"], "Unknown tool: slow", "{v}");
    assert_eq!(mocks[0].tool_calls("slow") + mocks[1].tool_calls("slow"), 0);
}

#[test]
fn a_2026_client_keeps_a_member_groups_balancing() {
    // Two backends that serve 2026-07-28 (the mock answers server/discover), round robin: a
    // 2026-07-28 request to the member is picked once, so both backends get calls (a second
    // pick per request would send every call to the same one).
    let mocks: Vec<MockServer> = ["x", "y"].iter().map(|n| mock(n)).collect();
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n\
         [[servers]]\nname = \"pair\"\npath = \"/pair\"\nbackends = [\"{}\", \"{}\"]\n\
         [servers.health]\nenabled = false\n\n\
         [[servers]]\nname = \"v\"\npath = \"/mcp\"\nmembers = [{{ server = \"pair\" }}]\n",
        mocks[0].url(),
        mocks[1].url()
    );
    let proxy = start_proxy(&config, "auto");
    let mut c = HttpClient::connect(proxy.addr).unwrap();
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    for id in 0..8 {
        let params = json!({"name": "pair_whoami", "arguments": {}, "_meta": meta.clone()});
        let r = c.mcp("/mcp", None, &rpc(id, "tools/call", params)).unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let (x, y) = (mocks[0].tool_calls("whoami"), mocks[1].tool_calls("whoami"));
    assert_eq!(x + y, 8);
    assert!(x >= 2 && y >= 2, "x {x}, y {y}");
}
