//! A session belongs to the caller who opened it, through a real `mcplb`: in a group with
//! authentication, another caller presenting the session's id is answered 404 (as for an
//! unknown session) on every path that carries a session (POST, the GET stream, DELETE, a
//! `session_failover = "reinitialize"` move, stdio sessions, the 2024-11-05 transport's
//! session), nothing of those requests reaches a backend, and the owner's session keeps
//! working. Owners hold across processes sharing the session key; a refreshed JWT of the same
//! identity keeps its session; ids sealed before sessions were bound keep working in groups
//! without authentication and are refused in groups with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::sse::{SseClient, WAIT};
use common::*;
use serde_json::Value;

/// Shared by every proxy of a test, as replicas of one deployment share it.
const SESSION_KEY: &str = "5345535349f04f574e45522d544553542d4b45592d30313233343536373839ab";
const ALICE_KEY: &str = "alice-api-key-0001";
const BOB_KEY: &str = "bob-api-key-0002";
/// A header every request of the intruding caller carries and the mock records: if it ever
/// shows up there, something of the intruder reached the backend.
const MARK: (&str, &str) = ("last-event-id", "sent-by-the-intruder");

type Headers<'a> = Vec<(&'a str, &'a str)>;

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One group `t` at `/mcp` over `backends` (TOML list items), health checks off (only the
/// test's requests reach the backends), then `group` (keys, then tables such as the auth).
fn config(backends: &str, group_keys: &str, tables: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nsession_key = \"{SESSION_KEY}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{backends}]\n{group_keys}\n\
         [servers.health]\nenabled = false\n{tables}"
    )
}

fn api_keys() -> String {
    format!(
        "[servers.auth]\napi_keys = [\"sha256:{}\", \"sha256:{}\"]\n",
        sha256_hex(ALICE_KEY),
        sha256_hex(BOB_KEY)
    )
}

fn request(
    p: &Proxy,
    method: &str,
    who: &[(&str, &str)],
    sid: Option<&str>,
    body: Option<&Value>,
) -> mcplb::demo::Response {
    let mut h: Headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(who);
    if let Some(s) = sid {
        h.push(("mcp-session-id", s));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    HttpClient::connect(p.addr)
        .unwrap()
        .request(method, "/mcp", &h, body.as_bytes())
        .unwrap()
}

/// initialize + notifications/initialized as `who`; the session id.
fn open_session(p: &Proxy, who: &[(&str, &str)]) -> String {
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}}),
    );
    let r = request(p, "POST", who, None, Some(&init));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let sid = r
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(request(p, "POST", who, Some(&sid), Some(&note)).status, 202);
    sid
}

/// A `tools/call` of `tool` in session `sid` as `who`: the status and the result's text.
fn call(p: &Proxy, who: &[(&str, &str)], sid: &str, tool: &str, args: Value) -> (u16, String) {
    let body = rpc(7, "tools/call", json!({"name": tool, "arguments": args}));
    let r = request(p, "POST", who, Some(sid), Some(&body));
    let v = r.json().unwrap_or_default();
    if r.status == 404 {
        // mcplb's own 404 carries the request's id, like any refusal it makes.
        assert_eq!(v["id"], 7, "{v}");
    }
    let text = v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (r.status, text)
}

/// Opens the session's GET stream as `who`: its status, after the first event when it opened.
fn get_stream(p: &Proxy, who: &[(&str, &str)], sid: &str) -> u16 {
    let mut h: Headers = who.to_vec();
    h.push(("mcp-session-id", sid));
    let mut s = SseClient::open(p.addr, "/mcp", &h);
    if s.status == 200 {
        assert!(s.next(WAIT).is_some(), "the stream opened but sent nothing");
    }
    s.status
}

fn counter(p: &Proxy, name: &str) -> u64 {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let r = c.request("GET", "/stats", &[], b"").unwrap();
    r.json().unwrap()["counters"][name].as_u64().unwrap()
}

/// Waits for the once-a-second statistics flush to show `n` refused ids.
fn wait_mismatches(p: &Proxy, n: u64) {
    wait_until(&format!("session_owner_mismatch = {n}"), || {
        counter(p, "session_owner_mismatch") == n
    });
}

#[test]
fn another_api_key_cannot_use_post_get_or_delete_of_a_session() {
    let m = mock("alpha");
    let bob_auth = format!("Bearer {BOB_KEY}");
    for driver in DRIVERS {
        let p = start_proxy(
            &config(&format!("\"{}\"", m.url()), "", &api_keys()),
            driver,
        );
        let alice = [("x-api-key", ALICE_KEY)];
        let bob = [("authorization", bob_auth.as_str()), MARK];
        let sid = open_session(&p, &alice);
        let sessions = m.sessions();

        assert_eq!(call(&p, &bob, &sid, "whoami", json!({})).0, 404, "{driver}");
        assert_eq!(get_stream(&p, &bob, &sid), 404, "{driver}");
        let r = request(&p, "DELETE", &bob, Some(&sid), None);
        assert_eq!(r.status, 404, "{driver}");
        // Refused exactly as an id nobody issued: same status, same error.
        let unknown = request(&p, "DELETE", &bob, Some("bm90LWEtc2Vzc2lvbg"), None);
        assert_eq!((unknown.status, unknown.body.clone()), (r.status, r.body));

        // None of it reached the backend, and the session is still there.
        assert_eq!(m.last_header(MARK.0), None, "{driver}");
        assert_eq!(m.sessions(), sessions);
        wait_mismatches(&p, 3);

        // The owner's session works on every method.
        assert_eq!(
            call(&p, &alice, &sid, "whoami", json!({})),
            (200, "alpha".to_string())
        );
        assert_eq!(get_stream(&p, &alice, &sid), 200, "{driver}");
        let r = request(&p, "DELETE", &alice, Some(&sid), None);
        assert_eq!(r.status, 200, "{driver}");
        assert_eq!(m.sessions(), sessions - 1);
        // Bob's own sessions are his.
        let bob = [bob[0]];
        let his = open_session(&p, &bob);
        assert_eq!(call(&p, &bob, &his, "whoami", json!({})).0, 200);
        assert_eq!(call(&p, &alice, &his, "whoami", json!({})).0, 404);
        wait_mismatches(&p, 4);
    }
}

#[test]
fn another_callers_requests_spend_nothing_of_the_sessions_limits() {
    let m = mock("alpha");
    // A session may send 4 requests (then 429) in this test's time.
    let limits = "\n[[limits]]\ntool = \"whoami\"\nkey = \"session\"\nrate = 0.001\nburst = 3\n";
    let cfg = config(&format!("\"{}\"", m.url()), "", &api_keys())
        .replace("\n[admin]", &format!("{limits}\n[admin]"));
    let p = start_proxy(&cfg, "auto");
    let alice = [("x-api-key", ALICE_KEY)];
    let bob = [("x-api-key", BOB_KEY)];
    let sid = open_session(&p, &alice);
    // Refused as not theirs before any limit is looked at: 404, never 429.
    for _ in 0..5 {
        assert_eq!(call(&p, &bob, &sid, "whoami", json!({})).0, 404);
    }
    for _ in 0..3 {
        assert_eq!(call(&p, &alice, &sid, "whoami", json!({})).0, 200);
    }
    assert_eq!(call(&p, &alice, &sid, "whoami", json!({})).0, 429);
}

#[test]
fn owners_hold_across_replicas_and_ids_from_before_binding() {
    let m = mock("alpha");
    let backends = format!("\"{}\"", m.url());
    let alice = [("x-api-key", ALICE_KEY)];
    let bob = [("x-api-key", BOB_KEY)];
    // Two replicas (or a restart) sharing the session key, and a group without authentication
    // (sessions there are unowned, as every id sealed before binding was).
    let one = start_proxy(&config(&backends, "", &api_keys()), "auto");
    let two = start_proxy(&config(&backends, "", &api_keys()), "auto");
    let open = start_proxy(&config(&backends, "", ""), "auto");

    let sid = open_session(&one, &alice);
    assert_eq!(call(&two, &alice, &sid, "whoami", json!({})).0, 200);
    assert_eq!(call(&two, &bob, &sid, "whoami", json!({})).0, 404);

    // An unowned id works where there is no authentication, and is refused where there is.
    let unowned = open_session(&open, &[]);
    assert!(unowned.len() < sid.len(), "{unowned} vs {sid}");
    assert_eq!(call(&open, &[], &unowned, "whoami", json!({})).0, 200);
    assert_eq!(call(&two, &alice, &unowned, "whoami", json!({})).0, 404);
    wait_mismatches(&two, 2);
    // A group without authentication accepts any id it can open, as before.
    assert_eq!(call(&open, &[], &sid, "whoami", json!({})).0, 200);
    assert_eq!(counter(&open, "session_owner_mismatch"), 0);
}

// ------------------------------------------------------------------------------------ JWTs

const ISS: &str = "https://auth.owner.example";
const AUD: &str = "https://mcp.owner.example/mcp";

/// An EdDSA key made here, its JWKS file, and tokens it signs.
struct Issuer {
    enc: jsonwebtoken::EncodingKey,
    jwks: std::path::PathBuf,
}

impl Issuer {
    fn new() -> Issuer {
        use base64::Engine as _;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let k = ed25519_dalek::SigningKey::generate(&mut rand::thread_rng());
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes());
        let jwks = std::env::temp_dir().join(format!(
            "mcplb-owner-jwks-{}-{}.json",
            std::process::id(),
            rand::random::<u32>()
        ));
        let doc = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
            "use": "sig", "x": x}]});
        std::fs::write(&jwks, doc.to_string()).unwrap();
        let der = k.to_pkcs8_der().unwrap();
        Issuer {
            enc: jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
            jwks,
        }
    }

    /// A token for `sub`, issued `age` seconds ago (two tokens of one subject differ).
    fn token(&self, sub: &str, age: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some("k1".into());
        let claims = json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": now - age,
            "exp": now - age + 600});
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&h, &claims, &self.enc).unwrap()
        )
    }

    fn auth_table(&self) -> String {
        format!(
            "[servers.auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"{}\"\n",
            self.jwks.display()
        )
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.jwks);
    }
}

#[test]
fn a_refreshed_jwt_keeps_its_session_and_another_subject_is_refused() {
    let m = mock("alpha");
    let iss = Issuer::new();
    for driver in DRIVERS {
        let p = start_proxy(
            &config(&format!("\"{}\"", m.url()), "", &iss.auth_table()),
            driver,
        );
        let first = iss.token("alice", 60);
        let refreshed = iss.token("alice", 0);
        assert_ne!(first, refreshed);
        let other = iss.token("bob", 0);
        let sid = open_session(&p, &[("authorization", &first)]);

        let bob = [("authorization", other.as_str()), MARK];
        assert_eq!(call(&p, &bob, &sid, "whoami", json!({})).0, 404);
        assert_eq!(get_stream(&p, &bob, &sid), 404);
        assert_eq!(request(&p, "DELETE", &bob, Some(&sid), None).status, 404);
        assert_eq!(m.last_header(MARK.0), None);
        wait_mismatches(&p, 3);

        let alice = [("authorization", refreshed.as_str())];
        assert_eq!(
            call(&p, &alice, &sid, "whoami", json!({})),
            (200, "alpha".to_string()),
            "{driver}"
        );
        assert_eq!(get_stream(&p, &alice, &sid), 200);
        assert_eq!(request(&p, "DELETE", &alice, Some(&sid), None).status, 200);
    }
}

// ------------------------------------------------------- failover, stdio, 2024-11-05 transport

#[test]
fn a_session_failover_replays_only_for_the_owner() {
    for driver in DRIVERS {
        let (a, b) = (mock("a"), mock("b"));
        let cfg = config(
            &format!("\"{}\", \"{}\"", a.url(), b.url()),
            "session_failover = \"reinitialize\"",
            &api_keys(),
        );
        let p = start_proxy(&cfg, driver);
        let alice = [("x-api-key", ALICE_KEY)];
        let bob = [("x-api-key", BOB_KEY), MARK];
        let sid = open_session(&p, &alice);
        let (status, home) = call(&p, &alice, &sid, "whoami", json!({}));
        assert_eq!(status, 200);
        // The session's backend goes away; the other one is where a failover would go.
        let (gone, other) = if home == "a" { (a, b) } else { (b, a) };
        drop(gone);
        let before = other.requests();
        assert_eq!(call(&p, &bob, &sid, "whoami", json!({})).0, 404);
        assert_eq!(
            other.requests(),
            before,
            "the intruder's request replayed an initialize"
        );
        assert_eq!(other.last_header(MARK.0), None);
        // The owner's next request moves the session (its initialize replayed), and its calls
        // run there. (A read-only request first: a tools/call on a pooled connection the dead
        // backend closed is never re-sent, as it may have run.)
        let list = rpc(8, "tools/list", json!({}));
        assert_eq!(
            request(&p, "POST", &alice, Some(&sid), Some(&list)).status,
            200
        );
        assert!(other.requests() > before);
        let (status, now_on) = call(&p, &alice, &sid, "whoami", json!({}));
        assert_eq!(status, 200, "{driver}");
        assert_ne!(now_on, home);
        assert_eq!(call(&p, &bob, &sid, "whoami", json!({})).0, 404);
        wait_mismatches(&p, 2);
    }
}

#[test]
fn stdio_sessions_belong_to_their_caller() {
    let script = format!("{}/../tests/py/stdio_server.py", env!("CARGO_MANIFEST_DIR"));
    let backends = format!("{{ command = [\"python3\", \"-u\", \"{script}\"] }}");
    let p = start_proxy(&config(&backends, "", &api_keys()), "auto");
    let alice = [("x-api-key", ALICE_KEY)];
    let bob = [("x-api-key", BOB_KEY)];
    let sid = open_session(&p, &alice);
    let echo =
        |who: &[(&str, &str)], text: &str| call(&p, who, &sid, "echo", json!({"text": text}));
    assert_eq!(echo(&alice, "from alice"), (200, "from alice".into()));
    assert_eq!(echo(&bob, "from bob").0, 404);
    assert_eq!(request(&p, "DELETE", &bob, Some(&sid), None).status, 404);
    // The stdio server saw only the owner's calls.
    let (status, seen) = call(&p, &alice, &sid, "calls_seen", json!({}));
    assert_eq!(status, 200);
    let seen: Vec<(String, Option<String>)> = serde_json::from_str(&seen).unwrap();
    assert!(
        seen.iter()
            .all(|(_, text)| text.as_deref() != Some("from bob")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|(_, t)| t.as_deref() == Some("from alice")));
    wait_mismatches(&p, 2);
}

/// An old client's `POST {path}/messages?sessionId=...` of `msg`: the status.
fn legacy_post(p: &Proxy, endpoint: &str, who: &[(&str, &str)], msg: &Value) -> u16 {
    let mut h: Headers = vec![("content-type", "application/json")];
    h.extend_from_slice(who);
    HttpClient::connect(p.addr)
        .unwrap()
        .request("POST", endpoint, &h, msg.to_string().as_bytes())
        .unwrap()
        .status
}

/// Opens an old client's stream as `who`: the stream and its announced POST endpoint.
fn legacy_open(p: &Proxy, who: &[(&str, &str)]) -> (SseClient, String) {
    let mut sse = SseClient::open(p.addr, "/mcp/sse", who);
    assert_eq!(sse.status, 200);
    let ev = sse.next(WAIT).unwrap();
    assert_eq!(ev.event.as_deref(), Some("endpoint"));
    (sse, ev.data)
}

#[test]
fn an_old_clients_session_belongs_to_its_caller() {
    let m = mock("alpha");
    let p = start_proxy(
        &config(
            &format!("\"{}\"", m.url()),
            "legacy_sse = true",
            &api_keys(),
        ),
        "auto",
    );
    // X-Api-Key (which the bridge now passes on to mcplb's own listener, like Authorization).
    let alice = [("x-api-key", ALICE_KEY)];
    let bob_auth = format!("Bearer {BOB_KEY}");
    let bob = [("authorization", bob_auth.as_str()), MARK];
    let (mut sse, endpoint) = legacy_open(&p, &alice);
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "old", "version": "0"}}),
    );
    assert_eq!(legacy_post(&p, &endpoint, &alice, &init), 202);
    assert_eq!(sse.response(1)["result"]["serverInfo"]["name"], "alpha");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(legacy_post(&p, &endpoint, &alice, &note), 202);

    // Another caller posting to the session is refused before the bridge.
    let intrude = rpc(
        2,
        "tools/call",
        json!({"name": "echo", "arguments": {"x": "bob"}}),
    );
    assert_eq!(legacy_post(&p, &endpoint, &bob, &intrude), 404);
    // ... also when it names the session the way the bridge would also read.
    let alt = endpoint.replace("sessionId=", "session_id=");
    assert_eq!(legacy_post(&p, &alt, &bob, &intrude), 404);
    // Its own stream cannot pick the owner's id either.
    let id = endpoint.split("sessionId=").nth(1).unwrap().to_string();
    let (_bob_sse, bob_endpoint) =
        legacy_open(&p, &[bob[0], ("mcplb-legacy-session", id.as_str())]);
    assert!(!bob_endpoint.contains(&id), "{bob_endpoint}");
    wait_mismatches(&p, 2);

    // The owner's session goes on; the intruder's call never ran in it.
    let call = rpc(3, "tools/call", json!({"name": "whoami", "arguments": {}}));
    assert_eq!(legacy_post(&p, &endpoint, &alice, &call), 202);
    assert_eq!(sse.response(3)["result"]["content"][0]["text"], "alpha");
    assert!(sse.others.iter().all(|m| m["id"] != 2), "{:?}", sse.others);
    assert_eq!(m.last_header(MARK.0), None);
    assert_eq!(m.tool_calls("echo"), 0);
    // An id that does not open gets the same 404 from the worker (and is not counted).
    let r = HttpClient::connect(p.addr)
        .unwrap()
        .request(
            "POST",
            "/mcp/messages?sessionId=forged",
            &[("content-type", "application/json"), alice[0]],
            intrude.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["error"]["message"], "Session not found");
    assert_eq!(r.json().unwrap()["id"], 2);
    assert_eq!(counter(&p, "session_owner_mismatch"), 2);
}

/// `POST /reload` on `p`'s admin port: the status and the answer.
fn reload(p: &Proxy) -> (u16, Value) {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let r = c.request("POST", "/reload", &[], b"").unwrap();
    (r.status, r.json().unwrap_or_default())
}

#[test]
fn session_keys_rotate_by_reload_and_a_dropped_key_ends_its_sessions() {
    const NEW_KEY: &str = "4e45572d4b45592d4e45572d4b45592d4e45572d4b45592d4e45572d4b45592d";
    let m = mock("alpha");
    let backends = format!("\"{}\"", m.url());
    let alice = [("x-api-key", ALICE_KEY)];
    let bob = [("x-api-key", BOB_KEY)];
    // One group with authentication (owned ids), one without (unowned ids).
    let open_group = format!(
        "\n[[servers]]\nname = \"o\"\npath = \"/open\"\nbackends = [{backends}]\n\
         [servers.health]\nenabled = false\n"
    );
    let with_keys = |keys: &str| {
        config(&backends, "", &format!("{}{open_group}", api_keys())).replace(
            &format!("session_key = \"{SESSION_KEY}\""),
            &format!("session_keys = [{keys}]"),
        )
    };
    let p = start_proxy(
        &config(&backends, "", &format!("{}{open_group}", api_keys())),
        "auto",
    );
    let old = open_session(&p, &alice);
    let open_call = |sid: &str| {
        let body = rpc(3, "tools/call", json!({"name": "whoami", "arguments": {}}));
        let mut h: Headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        h.push(("mcp-session-id", sid));
        HttpClient::connect(p.addr)
            .unwrap()
            .request("POST", "/open", &h, body.to_string().as_bytes())
            .unwrap()
            .status
    };
    let open_init = || {
        let init = rpc(
            1,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"}}),
        );
        let h: Headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        let r = HttpClient::connect(p.addr)
            .unwrap()
            .request("POST", "/open", &h, init.to_string().as_bytes())
            .unwrap();
        assert_eq!(r.status, 200);
        r.header("mcp-session-id").unwrap().to_string()
    };
    let old_open = open_init();
    let reload_with = |text: String| {
        std::fs::write(&p.config_path, text).unwrap();
        reload(&p)
    };

    // A bad key list is refused by name (never by value), and the running keys stay.
    let (status, v) = reload_with(with_keys(&format!(
        "\"{NEW_KEY}\", \"not-a-key\", \"{NEW_KEY}\""
    )));
    assert_eq!(status, 400, "{v}");
    let errs = v.to_string();
    assert!(errs.contains("proxy.session_keys[1]: "), "{errs}");
    assert!(
        errs.contains("proxy.session_keys[2]: the same key as proxy.session_keys[0]"),
        "{errs}"
    );
    assert!(
        !errs.contains(NEW_KEY) && !errs.contains("not-a-key"),
        "{errs}"
    );
    assert_eq!(call(&p, &alice, &old, "whoami", json!({})).0, 200);

    // Rotation: the new key seals, the old one still opens.
    let (status, v) = reload_with(with_keys(&format!("\"{NEW_KEY}\", \"{SESSION_KEY}\"")));
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("a new sealing key"), "{v}");
    assert!(!v.to_string().contains(NEW_KEY), "{v}");
    assert_eq!(
        call(&p, &alice, &old, "whoami", json!({})),
        (200, "alpha".to_string())
    );
    // The old id's owner is still checked (under the key that sealed it).
    assert_eq!(call(&p, &bob, &old, "whoami", json!({})).0, 404);
    assert_eq!(open_call(&old_open), 200);
    let new = open_session(&p, &alice);
    let new_open = open_init();
    assert_eq!(call(&p, &alice, &new, "whoami", json!({})).0, 200);
    assert_eq!(call(&p, &bob, &new, "whoami", json!({})).0, 404);

    // Removing every key is refused: it would end every session.
    let (status, v) = reload_with(
        config(&backends, "", &format!("{}{open_group}", api_keys()))
            .replace(&format!("session_key = \"{SESSION_KEY}\"\n"), ""),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v.to_string()
            .contains("proxy.session_keys: cannot be removed"),
        "{v}"
    );

    // The old key dropped: its sessions are unknown (404: the client re-initializes), the
    // new key's go on.
    let (status, v) = reload_with(with_keys(&format!("\"{NEW_KEY}\"")));
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("1 dropped"), "{v}");
    assert_eq!(call(&p, &alice, &old, "whoami", json!({})).0, 404);
    assert_eq!(open_call(&old_open), 404);
    assert_eq!(
        call(&p, &alice, &new, "whoami", json!({})),
        (200, "alpha".to_string())
    );
    assert_eq!(open_call(&new_open), 200);
    assert_eq!(
        call(&p, &alice, &open_session(&p, &alice), "whoami", json!({})).0,
        200
    );
}

/// A keep-alive connection remembers the last id that opened (`SessionSealer::open_memo`), so
/// its next request in the session skips the decryption: every other id it carries is still
/// opened and checked (another caller's, an altered one, another session's), the owner is
/// checked on every request, and a reload that drops the key ends the remembered session too.
#[test]
fn a_keep_alive_connection_checks_every_id_it_carries() {
    const NEW_KEY: &str = "4e45572d4b45592d4e45572d4b45592d4e45572d4b45592d4e45572d4b45592d";
    let m = mock("alpha");
    let backends = format!("\"{}\"", m.url());
    let alice = [("x-api-key", ALICE_KEY)];
    let bob = [("x-api-key", BOB_KEY)];
    // One worker: every request of the test meets the same core.
    let text = config(&backends, "", &api_keys()).replace("workers = 2", "workers = 1");
    let p = start_proxy(&text, "auto");
    let a1 = open_session(&p, &alice);
    let a2 = open_session(&p, &alice);
    let b1 = open_session(&p, &bob);
    let mut c = HttpClient::connect(p.addr).unwrap();
    let mut on = |who: &[(&str, &str)], sid: &str| -> (u16, String) {
        let body = rpc(7, "tools/call", json!({"name": "whoami", "arguments": {}}));
        let mut h: Headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        h.extend_from_slice(who);
        h.push(("mcp-session-id", sid));
        let r = c
            .request("POST", "/mcp", &h, body.to_string().as_bytes())
            .unwrap();
        let v = r.json().unwrap_or_default();
        let text = v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (r.status, text)
    };
    assert_eq!(on(&alice, &a1), (200, "alpha".to_string()));
    assert_eq!(on(&alice, &a1).0, 200);
    // The remembered id with another caller's credential: refused, on the same connection.
    assert_eq!(on(&bob, &a1).0, 404);
    assert_eq!(on(&alice, &a1).0, 200);
    // One character of it changed: opened in full, unknown.
    let mid = a1.len() / 2;
    let swap = if &a1[mid..=mid] == "A" { "B" } else { "A" };
    let altered = format!("{}{swap}{}", &a1[..mid], &a1[mid + 1..]);
    assert_eq!(on(&alice, &altered).0, 404);
    assert_eq!(on(&alice, &a1).0, 200);
    // Other sessions' ids on the same connection, then back.
    assert_eq!(on(&alice, &a2).0, 200);
    assert_eq!(on(&bob, &b1).0, 200);
    assert_eq!(on(&alice, &b1).0, 404);
    assert_eq!(on(&alice, &a1).0, 200);
    wait_mismatches(&p, 2);
    // A reload that drops the key: the id this connection's last request opened is unknown now.
    std::fs::write(
        &p.config_path,
        text.replace(
            &format!("session_key = \"{SESSION_KEY}\""),
            &format!("session_keys = [\"{NEW_KEY}\"]"),
        ),
    )
    .unwrap();
    let (status, v) = reload(&p);
    assert_eq!(status, 200, "{v}");
    assert_eq!(on(&alice, &a1).0, 404);
    assert_eq!(on(&alice, &a1).0, 404);
}
