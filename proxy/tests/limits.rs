//! Rate limits through a real `mcplb`: per caller, per tool, with the right `Retry-After`,
//! before any byte reaches the backend; other callers and tools untouched; notifications over
//! a limit dropped, not answered with an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn call(c: &mut HttpClient, sid: &str, key: &str, tool: &str, id: u64) -> mcplb::demo::Response {
    let body = rpc(id, "tools/call", json!({"name": tool, "arguments": {}})).to_string();
    c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", sid),
            ("x-api-key", key),
        ],
        body.as_bytes(),
    )
    .unwrap()
}

#[test]
fn one_caller_over_its_limit_on_one_tool() {
    let m = mock("alpha");
    let limits = r#"
[[limits]]
tool = "ec*"
key = "header:x-api-key"
rate = 0.5
burst = 2

[[limits]]
method = "notifications/cancelled"
key = "global"
rate = 0.001
burst = 1
"#;
    for driver in DRIVERS {
        let before = m.tool_calls("echo");
        // Health checks off: this test counts every message the backend receives.
        let cfg = format!(
            "{}[servers.health]\nenabled = false\n{limits}",
            config_for(&[&m], "")
        );
        let p = start_proxy(&cfg, driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut c);
        assert_eq!(call(&mut c, &sid, "alice", "echo", 1).status, 200);
        assert_eq!(call(&mut c, &sid, "alice", "echo", 2).status, 200);
        let r = call(&mut c, &sid, "alice", "echo", 3);
        assert_eq!(r.status, 429, "driver {driver}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        let v = r.json().unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["error"]["data"]["limit"], 0);
        let ms = v["error"]["data"]["retryAfterMs"].as_u64().unwrap();
        assert!((1000..=2000).contains(&ms), "{ms}");
        // Another caller on the same tool, and the same caller on another tool: untouched.
        assert_eq!(call(&mut c, &sid, "bob", "echo", 4).status, 200);
        assert_eq!(call(&mut c, &sid, "bob", "echo", 5).status, 200);
        for i in 0..5 {
            assert_eq!(call(&mut c, &sid, "alice", "whoami", 10 + i).status, 200);
        }
        // The rejected call never reached the backend.
        assert_eq!(m.tool_calls("echo") - before, 4);

        // Notifications over a limit are dropped with 202, not forwarded.
        let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 1}});
        let seen = m.requests();
        assert_eq!(c.mcp("/mcp", Some(&sid), &note).unwrap().status, 202);
        assert_eq!(m.requests(), seen + 1);
        assert_eq!(c.mcp("/mcp", Some(&sid), &note).unwrap().status, 202);
        assert_eq!(
            m.requests(),
            seen + 1,
            "a notification over its limit was forwarded"
        );
    }
}

#[test]
fn bad_limit_config_names_the_key() {
    let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n[[limits]]\nserver = \"nope\"\nkey = \"cookie\"\nrate = -1\nburst = 0\n";
    let err = mcplb::Config::parse(text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    for k in [
        "limits[0].server",
        "limits[0].key",
        "limits[0].rate",
        "limits[0].burst",
    ] {
        assert!(err.contains(k), "missing {k} in {err}");
    }
}
