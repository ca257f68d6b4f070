//! Per-tool policy through a real `mcplb` on both drivers, in front of the mock backend
//! (whose list answers are JSON with a length; `tests/py/test_policy.py` covers the SDK's SSE
//! answers): two API-key identities get different `tools/list` answers on kept-alive
//! connections, a denied call is answered like an unknown tool with its id and never reaches
//! the backend, and the audit trail names the rule that denied it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

const ALICE: &str = "alice-policy-key";
const BOT: &str = "bot-policy-key";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn post(c: &mut HttpClient, key: &str, body: &Value) -> mcplb::demo::Response {
    let h = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("x-api-key", key),
    ];
    c.request("POST", "/mcp", &h, body.to_string().as_bytes())
        .unwrap()
}

fn tool_names(c: &mut HttpClient, key: &str) -> Vec<String> {
    let r = post(c, key, &rpc(5, "tools/list", json!({})));
    assert_eq!(r.status, 200);
    let v = r.json().unwrap();
    assert_eq!(v["id"], 5, "{v}");
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn identities_see_their_tools_and_a_denied_call_reaches_no_backend() {
    for driver in DRIVERS {
        let backend = mock_with(MockConfig {
            stateless: true,
            ..Default::default()
        });
        let audit = std::env::temp_dir().join(format!(
            "mcplb-policy-audit-{}-{driver}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&audit);
        let config = format!(
            "{}[servers.health]\nenabled = false\n\
             [servers.auth]\napi_keys = [{{ sha256 = \"{}\", identity = \"alice\" }}, {{ sha256 = \"{}\", identity = \"bot-7\" }}]\n\
             [[policies]]\neffect = \"allow\"\nidentities = [\"alice\"]\n\
             [[policies]]\neffect = \"allow\"\nidentities = [\"bot-*\"]\ntools = [\"echo\", \"who*\"]\n\
             [[policies]]\neffect = \"deny\"\nidentities = [\"bot-*\"]\ntools = [\"whoami\"]\n\
             [audit]\nlog = \"{}\"\n",
            config_for(&[&backend], ""),
            sha256_hex(ALICE),
            sha256_hex(BOT),
            audit.display()
        );
        let p = start_proxy(&config, driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        // The same kept-alive connection carries filtered and unfiltered answers.
        let all = tool_names(&mut c, ALICE);
        assert!(
            all.len() >= 8 && all.contains(&"whoami".to_owned()),
            "{all:?}"
        );
        assert_eq!(tool_names(&mut c, BOT), ["echo"], "{driver}");
        assert_eq!(tool_names(&mut c, ALICE), all, "{driver}");

        let call =
            |name: &str, id: u64| rpc(id, "tools/call", json!({"name": name, "arguments": {}}));
        let r = post(&mut c, BOT, &call("whoami", 41));
        assert_eq!(r.status, 200);
        let v = r.json().unwrap();
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (json!(41), json!(-32602)),
            "{v}"
        );
        // Not allowed by any rule: denied by the default, the same way.
        let v = post(&mut c, BOT, &call("slow", 42)).json().unwrap();
        assert_eq!(v["error"]["code"], -32602, "{v}");
        // A batch cannot carry a call past the decision.
        let r = post(&mut c, BOT, &json!([call("whoami", 45)]));
        assert_eq!(r.status, 400);
        let e = &r.json().unwrap()["error"];
        assert_eq!(e["code"], -32600);
        assert!(
            e["message"].as_str().unwrap().contains("per-tool policies"),
            "{e}"
        );
        assert_eq!(
            backend.tool_calls("whoami"),
            0,
            "{driver}: a denied call reached the backend"
        );
        assert_eq!(backend.tool_calls("slow"), 0, "{driver}");
        let v = post(&mut c, BOT, &call("echo", 43)).json().unwrap();
        assert!(v["result"].is_object(), "{v}");
        let v = post(&mut c, ALICE, &call("whoami", 44)).json().unwrap();
        assert!(v["result"].is_object(), "{v}");
        assert_eq!(backend.tool_calls("whoami"), 1, "{driver}");

        wait_until("the audit lines", || {
            std::fs::read_to_string(&audit).is_ok_and(|t| t.lines().count() >= 4)
        });
        let lines: Vec<Value> = std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let find = |id: &str, name: &str| {
            lines
                .iter()
                .find(|l| l["identity"] == id && l["name"] == name)
                .unwrap_or_else(|| panic!("no line for {id} {name} in {lines:?}"))
        };
        let denied = find("bot-7", "whoami");
        assert_eq!(denied["decision"], "denied");
        assert_eq!(denied["rule"], "policies[2]");
        // Answered by mcplb: its JSON-RPC code, no backend (the key is left out).
        assert_eq!(keys(denied), with(&["code", "name", "rule"]), "{denied}");
        assert_eq!(denied["code"], -32602);
        // Forwarded and answered: a backend, no code, no upstream error, no session.
        let allowed = find("alice", "whoami");
        assert_eq!(
            keys(allowed),
            with(&["backend", "name", "rule"]),
            "{allowed}"
        );
        assert_eq!(find("bot-7", "slow")["rule"], "policy_default");
        assert_eq!(find("bot-7", "echo")["decision"], "allowed");
        assert_eq!(find("alice", "whoami")["rule"], "policies[0]");
        assert!(!std::fs::read_to_string(&audit).unwrap().contains(BOT));
        drop(p);
        let _ = std::fs::remove_file(&audit);
    }
}

/// `arguments = "full"`: a call's arguments, sent over several lines, come out compact on the
/// call's one audit line; a group without rules is audited too (no decision, no rule).
#[test]
fn full_arguments_stay_on_one_line() {
    let backend = mock_with(MockConfig {
        stateless: true,
        ..Default::default()
    });
    let audit = std::env::temp_dir().join(format!(
        "mcplb-policy-audit-full-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&audit);
    let config = format!(
        "{}[servers.health]\nenabled = false\n[audit]\nlog = \"{}\"\narguments = \"full\"\n",
        config_for(&[&backend], ""),
        audit.display()
    );
    let p = start_proxy(&config, "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let body = "{\"jsonrpc\": \"2.0\", \"id\": 7, \"method\": \"tools/call\",\n \"params\": {\"name\": \"echo\",\n  \"arguments\": {\n    \"text\": \"two\\nlines\",\n    \"n\": [1, 2]\n  }}}";
    let h = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    let r = c.request("POST", "/mcp", &h, body.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    wait_until("the audit line", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("echo"))
    });
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let line: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(
        line["arguments"],
        json!({"text": "two\nlines", "n": [1, 2]})
    );
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["decision"], "allowed");
    assert_eq!(line["identity"], Value::Null);
    assert_eq!(line["client"], "127.0.0.1");
    // No policy: no rule key; an anonymous caller: `identity` stays, as null (it is one of
    // the keys every line has).
    assert_eq!(
        keys(&line),
        with(&["arguments", "backend", "name", "trace_id"]),
        "{line}"
    );
    drop(p);
    let _ = std::fs::remove_file(&audit);
}

/// Policies change with a reload under load, with no failed request: callers keep calling an
/// allowed tool over kept-alive connections while the rules about another tool flip five
/// times, and each flip applies (the other tool is denied, then allowed, then denied...).
#[test]
fn a_policy_reload_under_load_fails_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let backend = mock_with(MockConfig {
        stateless: true,
        ..Default::default()
    });
    let base = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[servers.health]\nenabled = false\n\
         [servers.auth]\napi_keys = [{{ sha256 = \"{}\", identity = \"bot-1\" }}]\n\
         [[policies]]\neffect = \"allow\"\ntools = [\"echo\", \"whoami\"]\n",
        config_for(&[&backend], ""),
        sha256_hex(BOT)
    );
    let deny_whoami = "[[policies]]\neffect = \"deny\"\ntools = [\"whoami\"]\n";
    let p = start_proxy(&base, "auto");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), p.addr);
            std::thread::spawn(move || {
                let mut c = HttpClient::connect(addr).unwrap();
                let mut id = 0;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let body = rpc(id, "tools/call", json!({"name": "echo", "arguments": {}}));
                    let good = post(&mut c, BOT, &body)
                        .json()
                        .is_ok_and(|v| v["result"].is_object() && v["id"] == id);
                    let n = if good { &ok } else { &failed };
                    n.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let whoami = |c: &mut HttpClient| {
        let body = rpc(1, "tools/call", json!({"name": "whoami", "arguments": {}}));
        post(c, BOT, &body).json().unwrap()["result"].is_object()
    };
    let mut c = HttpClient::connect(p.addr).unwrap();
    assert!(whoami(&mut c));
    for round in 0..5 {
        let denied = round % 2 == 0;
        let text = if denied {
            format!("{base}{deny_whoami}")
        } else {
            base.clone()
        };
        std::fs::write(&p.config_path, text).unwrap();
        let mut a = HttpClient::connect(p.admin.unwrap()).unwrap();
        let r = a.request("POST", "/reload", &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(whoami(&mut c), !denied, "round {round}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 20, "{ok:?}");
}

/// A virtual server's own `[[policies]]` apply to the names its clients see: its merged
/// `tools/list` keeps only what the caller may use, and a denied call reaches no member.
#[test]
fn a_virtual_servers_lists_and_calls_follow_its_policy() {
    for driver in DRIVERS {
        let backend = mock_with(MockConfig {
            stateless: true,
            ..Default::default()
        });
        let config = format!(
            "{}[servers.health]\nenabled = false\n\
             [[servers]]\nname = \"v\"\npath = \"/v\"\n\
             [servers.auth]\napi_keys = [{{ sha256 = \"{}\", identity = \"bot-1\" }}]\n\
             [[servers.members]]\nserver = \"t\"\n\
             [[policies]]\nserver = \"v\"\neffect = \"allow\"\ntools = [\"t_echo\", \"t_who*\"]\n\
             [[policies]]\nserver = \"v\"\neffect = \"deny\"\ntools = [\"t_whoami\"]\n",
            config_for(&[&backend], ""),
            sha256_hex(BOT)
        );
        let p = start_proxy(&config, driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let h = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("x-api-key", BOT),
        ];
        let mut post_v = |body: Value| {
            c.request("POST", "/v", &h, body.to_string().as_bytes())
                .unwrap()
                .json()
                .unwrap()
        };
        let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
        let list = post_v(rpc(1, "tools/list", json!({"_meta": meta})));
        let names: Vec<&str> = list["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{list}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["t_echo"], "{driver}: {list}");
        let call = |name: &str| {
            rpc(
                2,
                "tools/call",
                json!({"name": name, "arguments": {}, "_meta": meta}),
            )
        };
        let v = post_v(call("t_whoami"));
        assert_eq!(v["error"]["code"], -32602, "{driver}: {v}");
        assert_eq!(backend.tool_calls("whoami"), 0, "{driver}");
        let v = post_v(call("t_echo"));
        assert!(v["result"].is_object(), "{driver}: {v}");
    }
}

/// Reads from `s` into `buf` until `done(buf)` holds (10 s at most).
fn read_until(s: &mut std::net::TcpStream, buf: &mut Vec<u8>, done: impl Fn(&str) -> bool) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut tmp = [0u8; 4096];
    while !done(&String::from_utf8_lossy(buf)) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out; got {}",
            String::from_utf8_lossy(buf)
        );
        match s.read(&mut tmp) {
            Ok(0) => panic!("closed; got {}", String::from_utf8_lossy(buf)),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_confirm_rule_asks_on_the_calls_stream_and_forwards_only_an_approval() {
    use std::io::Write;
    for driver in DRIVERS {
        let backend = mock_with(MockConfig::default());
        let config = format!(
            "{}[servers.health]\nenabled = false\n\
             [[policies]]\neffect = \"allow\"\n\
             [[policies]]\neffect = \"confirm\"\ntools = [\"echo\"]\nmethods = [\"completion/complete\"]\n",
            config_for(&[&backend], ""),
        );
        let p = start_proxy(&config, driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {"elicitation": {}},
            "clientInfo": {"name": "t", "version": "0"}});
        let r = c.mcp("/mcp", None, &rpc(1, "initialize", init)).unwrap();
        let sid = r.header("mcp-session-id").unwrap().to_string();
        for (round, (answer, runs)) in [
            (json!({"action": "accept", "content": {"approve": true}}), 1),
            (json!({"action": "decline"}), 1),
            (
                json!({"action": "accept", "content": {"approve": false}}),
                1,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let id = 70 + round as u64;
            let body = rpc(
                id,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "hi"}}),
            )
            .to_string();
            let mut s = std::net::TcpStream::connect(p.addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            write!(
                s,
                "POST /mcp HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                 accept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut buf = Vec::new();
            read_until(&mut s, &mut buf, |t| {
                t.contains("mcplb-confirm-") && t.contains("\n\n")
            });
            let text = String::from_utf8_lossy(&buf).to_string();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(
                text.contains("elicitation/create") && text.contains("`echo`"),
                "{text}"
            );
            let at = text.find("\"mcplb-confirm-").unwrap();
            let own_id = &text[at + 1..at + 1 + "mcplb-confirm-".len() + 16];
            // Nothing ran while the user was asked.
            assert_eq!(backend.tool_calls("echo"), round.min(1) as u64, "{driver}");
            let reply = json!({"jsonrpc": "2.0", "id": own_id, "result": answer});
            let r = c.mcp("/mcp", Some(&sid), &reply).unwrap();
            assert_eq!(r.status, 202, "{driver}");
            read_until(&mut s, &mut buf, |t| t.ends_with("0\r\n\r\n"));
            let text = String::from_utf8_lossy(&buf).to_string();
            let last = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let v: Value = serde_json::from_str(last).unwrap();
            assert_eq!(v["id"], id, "{driver}: {text}");
            if round == 0 {
                assert!(
                    v["result"]["content"].is_array()
                        && v["result"].get("isError") != Some(&json!(true)),
                    "{v}"
                );
            } else {
                assert_eq!(v["result"]["isError"], true, "{driver}: {v}");
            }
            assert_eq!(backend.tool_calls("echo"), runs, "{driver}: round {round}");
            // The answer again finds no call waiting, and reaches no backend either.
            assert_eq!(c.mcp("/mcp", Some(&sid), &reply).unwrap().status, 202);
        }
        // A session whose client declared no elicitation is denied, told why.
        let plain = json!({"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}});
        let r = c.mcp("/mcp", None, &rpc(2, "initialize", plain)).unwrap();
        let other = r.header("mcp-session-id").unwrap().to_string();
        let call = rpc(9, "tools/call", json!({"name": "echo", "arguments": {}}));
        let v = c.mcp("/mcp", Some(&other), &call).unwrap().json().unwrap();
        assert_eq!(v["id"], 9, "{v}");
        assert_eq!(v["error"]["data"]["rule"], "policies[1]", "{v}");
        assert!(
            v["error"]["data"]["reason"]
                .as_str()
                .unwrap()
                .contains("elicitation"),
            "{v}"
        );
        assert_eq!(backend.tool_calls("echo"), 1, "{driver}");
        // Only tools/call is asked about: another method a confirm rule names is denied.
        let complete = rpc(
            10,
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "p"}, "argument": {"name": "a", "value": ""}}),
        );
        let v = c
            .mcp("/mcp", Some(&sid), &complete)
            .unwrap()
            .json()
            .unwrap();
        assert!(
            v["error"]["data"]["reason"]
                .as_str()
                .unwrap()
                .contains("tools/call only"),
            "{v}"
        );
    }
}

/// The keys every audit line has, and `extra`, sorted.
fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut k = vec![
        "client",
        "decision",
        "duration_us",
        "id",
        "identity",
        "method",
        "server",
        "status",
        "ts",
    ];
    k.extend_from_slice(extra);
    k.sort_unstable();
    k
}

/// An audit line's keys, sorted.
fn keys(line: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = line
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    k.sort_unstable();
    k
}
