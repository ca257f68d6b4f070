//! JWT bearer tokens through a real `mcplb`: tokens signed in the test with keys generated in
//! the test (RS256, ES256, EdDSA), a JWKS in a file and served by a loopback HTTP server; every
//! refusal is a 401 with the `WWW-Authenticate` resource-metadata hint and a JSON-RPC error
//! carrying the request's id; the protected-resource metadata document; the token's identity
//! as a rate-limit key and in the access log; JWKS rotation; and what the backend receives in
//! `Authorization`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISS: &str = "https://auth.test.example";
const AUD: &str = "https://mcp.test.example/mcp";

/// A signing key made in the test, with its public JWK.
struct TestKey {
    alg: Algorithm,
    kid: String,
    enc: EncodingKey,
    jwk: serde_json::Value,
}

fn rsa_key(kid: &str) -> TestKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let der = k.to_pkcs1_der().unwrap();
    TestKey {
        alg: Algorithm::RS256,
        kid: kid.into(),
        enc: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": B64.encode(k.n().to_bytes_be()), "e": B64.encode(k.e().to_bytes_be())}),
    }
}

fn ec_key(kid: &str) -> TestKey {
    use p256::pkcs8::EncodePrivateKey;
    let k = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let der = k.to_pkcs8_der().unwrap();
    let point = k.verifying_key().to_encoded_point(false);
    TestKey {
        alg: Algorithm::ES256,
        kid: kid.into(),
        enc: EncodingKey::from_ec_der(der.as_bytes()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())}),
    }
}

fn ed_key(kid: &str) -> TestKey {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let k = ed25519_dalek::SigningKey::generate(&mut rand::thread_rng());
    let der = k.to_pkcs8_der().unwrap();
    TestKey {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        enc: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": B64.encode(k.verifying_key().as_bytes())}),
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": now(), "exp": now() + 600})
}

fn sign(k: &TestKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, claims, &k.enc).unwrap()
}

/// POSTs an initialize with JSON-RPC id `id` and the given headers.
fn post(p: &Proxy, path: &str, id: u64, headers: &[(&str, &str)]) -> mcplb::demo::Response {
    let mut c = HttpClient::connect(p.addr).unwrap();
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(headers);
    let body = rpc(
        id,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}}),
    );
    c.request("POST", path, &h, body.to_string().as_bytes())
        .unwrap()
}

fn with_token(p: &Proxy, path: &str, id: u64, token: &str) -> mcplb::demo::Response {
    let auth = format!("Bearer {token}");
    post(p, path, id, &[("authorization", &auth)])
}

/// Asserts a 401 with the resource-metadata hint and a JSON-RPC error carrying `id`.
fn assert_refused(r: &mcplb::demo::Response, id: u64, why: &str) {
    assert_eq!(
        r.status,
        401,
        "{why}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let wa = r.header("www-authenticate").unwrap_or("");
    assert!(wa.starts_with("Bearer "), "{why}: {wa}");
    assert!(
        wa.contains("resource_metadata=\"https://mcp.test.example/.well-known/oauth-protected-resource/mcp\""),
        "{why}: {wa}"
    );
    assert!(wa.contains("error=\"invalid_token\""), "{why}: {wa}");
    let j = r.json().unwrap();
    assert_eq!(j["id"], id, "{why}: {j}");
    assert_eq!(j["error"]["code"], -32600, "{why}: {j}");
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mcplb-jwt-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn jwt_table(source: &str, extra: &str) -> String {
    format!(
        "[servers.auth.jwt]\nissuer = \"{ISS}\"\naudience = [\"{AUD}\"]\n{source}\nleeway = \"0s\"\n{extra}\n\
         [servers.auth.resource_metadata]\nresource = \"{AUD}\"\nauthorization_servers = [\"{ISS}\"]\nscopes_supported = [\"mcp:tools\"]\n"
    )
}

#[test]
fn tokens_of_every_algorithm_and_every_refusal() {
    let (rs, es, ed) = (rsa_key("rs-1"), ec_key("es-1"), ed_key("ed-1"));
    let file = temp_file("jwks.json", &jwks(&[&rs, &es, &ed]));
    let m = mock("alpha");
    let log = std::env::temp_dir().join(format!("mcplb-jwt-{}-access.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let cfg = format!(
        "{}{}\n[[limits]]\nkey = \"identity\"\nrate = 0.01\nburst = 3\n",
        config_for(&[&m], &format!("access_log = \"{}\"", log.display())),
        jwt_table(&format!("jwks_file = \"{}\"", file.display()), ""),
    );
    let p = start_proxy(&cfg, "auto");

    // Each algorithm: accepted, and the token is not passed to the backend.
    for (i, k) in [&rs, &es, &ed].into_iter().enumerate() {
        let r = with_token(
            &p,
            "/mcp",
            10 + i as u64,
            &sign(k, &claims(&format!("user-{i}"))),
        );
        assert_eq!(
            r.status,
            200,
            "{:?}: {:?}",
            k.alg,
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json().unwrap()["id"], 10 + i as u64);
    }
    assert_eq!(
        m.last_header("authorization"),
        None,
        "token passed upstream"
    );

    // No credential: 401 with the hint (no error code: RFC 6750 §3.1).
    let r = post(&p, "/mcp", 41, &[]);
    assert_eq!(r.status, 401);
    let wa = r.header("www-authenticate").unwrap();
    assert!(wa.contains("resource_metadata="), "{wa}");
    assert!(!wa.contains("error="), "{wa}");
    assert_eq!(r.json().unwrap()["id"], 41);

    let before = m.requests();
    let t = now();
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(
                &es,
                &json!({"iss": ISS, "aud": AUD, "sub": "a", "exp": t - 60}),
            ),
        ),
        (
            "not yet valid",
            sign(
                &es,
                &json!({"iss": ISS, "aud": AUD, "sub": "a", "nbf": t + 300, "exp": t + 600}),
            ),
        ),
        (
            "wrong iss",
            sign(
                &rs,
                &json!({"iss": "https://evil.example", "aud": AUD, "sub": "a", "exp": t + 600}),
            ),
        ),
        (
            "wrong aud",
            sign(
                &ed,
                &json!({"iss": ISS, "aud": "https://other.example/mcp", "sub": "a", "exp": t + 600}),
            ),
        ),
        (
            "no exp",
            sign(&ed, &json!({"iss": ISS, "aud": AUD, "sub": "a"})),
        ),
        ("bad signature", {
            // Signed by another key that claims the trusted key's kid.
            let mut impostor = ec_key("es-1");
            impostor.kid = "es-1".into();
            sign(&impostor, &claims("a"))
        }),
        ("unknown kid", sign(&ed_key("ed-unknown"), &claims("a"))),
        ("alg none", {
            let h = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"rs-1"}"#);
            let c = B64.encode(claims("a").to_string());
            format!("{h}.{c}.")
        }),
        ("HS256 with the public key as secret", {
            let secret = rs.jwk["n"].as_str().unwrap().as_bytes().to_vec();
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("rs-1".into());
            jsonwebtoken::encode(&h, &claims("a"), &EncodingKey::from_secret(&secret)).unwrap()
        }),
        ("garbage", "not.a.token".to_string()),
    ];
    for (i, (why, token)) in cases.iter().enumerate() {
        let r = with_token(&p, "/mcp", 100 + i as u64, token);
        assert_refused(&r, 100 + i as u64, why);
    }
    // A string id is echoed with its type.
    let mut c = HttpClient::connect(p.addr).unwrap();
    let body = json!({"jsonrpc": "2.0", "id": "req-7", "method": "ping"}).to_string();
    let r = c
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer x.y.z"),
            ],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["id"], "req-7");
    assert_eq!(
        m.requests(),
        before,
        "a refused request reached the backend"
    );

    // The identity (`sub`) keys a rate limit: alice uses her burst of 3, bob still gets in.
    let alice = sign(&rs, &claims("alice"));
    let bob = sign(&ed, &claims("bob"));
    for i in 0..3 {
        assert_eq!(with_token(&p, "/mcp", 200 + i, &alice).status, 200);
    }
    let r = with_token(&p, "/mcp", 203, &alice);
    assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["id"], 203);
    assert_eq!(with_token(&p, "/mcp", 204, &bob).status, 200);

    // The access log names the caller, never the token. Each worker flushes its own lines
    // once a second, so wait for both callers' lines (they may be on different workers).
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let both = text.contains("\"caller\":\"bob\"") && text.contains("\"caller\":\"alice\"");
        if both || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("\"caller\":\"alice\""), "{text}");
    assert!(text.contains("\"caller\":\"bob\""), "{text}");
    for (_, token) in &cases {
        assert!(!text.contains(token.as_str()));
    }
    assert!(!text.contains(&alice) && !text.contains(&bob));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn protected_resource_metadata_and_scopes() {
    let k = ed_key("k1");
    let file = temp_file("scopes.json", &jwks(&[&k]));
    let m = mock("alpha");
    let cfg = format!(
        "{}{}",
        config_for(&[&m], ""),
        jwt_table(
            &format!("jwks_file = \"{}\"", file.display()),
            "required_scopes = [\"mcp:tools\"]"
        ),
    );
    let p = start_proxy(&cfg, "legacy");
    let want = json!({
        "resource": AUD,
        "authorization_servers": [ISS],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools"],
    });
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let mut c = HttpClient::connect(p.addr).unwrap();
        let r = c.request("GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json().unwrap(), want, "{path}");
    }
    let mut c = HttpClient::connect(p.addr).unwrap();
    let r = c
        .request(
            "GET",
            "/.well-known/oauth-protected-resource/other",
            &[],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 404);

    // A token without the required scope: 403 insufficient_scope naming it.
    let mut cl = claims("carol");
    cl["scope"] = json!("mcp:read");
    let r = with_token(&p, "/mcp", 5, &sign(&k, &cl));
    assert_eq!(r.status, 403, "{:?}", String::from_utf8_lossy(&r.body));
    let wa = r.header("www-authenticate").unwrap();
    assert!(wa.contains("error=\"insufficient_scope\""), "{wa}");
    assert!(wa.contains("scope=\"mcp:tools\""), "{wa}");
    assert!(wa.contains("resource_metadata="), "{wa}");
    assert_eq!(r.json().unwrap()["id"], 5);
    cl["scope"] = json!("mcp:read mcp:tools");
    assert_eq!(with_token(&p, "/mcp", 6, &sign(&k, &cl)).status, 200);
    // `scp` as an array counts too.
    let mut cl = claims("dave");
    cl["scp"] = json!(["mcp:tools"]);
    assert_eq!(with_token(&p, "/mcp", 7, &sign(&k, &cl)).status, 200);

    // A verified token is cached, but not past its expiry.
    let mut cl = claims("erin");
    cl["scope"] = json!("mcp:tools");
    cl["exp"] = json!(now() + 2);
    let short = sign(&k, &cl);
    assert_eq!(with_token(&p, "/mcp", 8, &short).status, 200);
    std::thread::sleep(Duration::from_millis(3500));
    assert_refused(
        &with_token(&p, "/mcp", 9, &short),
        9,
        "expired after caching",
    );
    let _ = std::fs::remove_file(&file);
}

/// A loopback HTTP server answering every GET with the current `body` (and status), keeping
/// the request line it last saw.
struct JwksServer {
    url: String,
    body: Arc<Mutex<(u16, String)>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    last_line: Arc<Mutex<String>>,
}

fn jwks_server(initial: String) -> JwksServer {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
    let body = Arc::new(Mutex::new((200u16, initial)));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let last_line = Arc::new(Mutex::new(String::new()));
    let (b, h, line) = (body.clone(), hits.clone(), last_line.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut tmp = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&tmp[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            *line.lock().unwrap() = text.lines().next().unwrap_or("").to_string();
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (status, text) = b.lock().unwrap().clone();
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    JwksServer {
        url,
        body,
        hits,
        last_line,
    }
}

#[test]
fn jwks_url_rotation_and_failed_refresh() {
    let (a, b) = (rsa_key("a"), ec_key("b"));
    let srv = jwks_server(jwks(&[&a]));
    let m = mock("alpha");
    let cfg = format!(
        "{}{}",
        config_for(&[&m], ""),
        jwt_table(
            &format!("jwks_url = \"{}\"", srv.url),
            "refresh = \"2s\"\nmin_refresh = \"1s\""
        ),
    );
    let p = start_proxy(&cfg, "auto");
    let (ta, tb) = (sign(&a, &claims("a")), sign(&b, &claims("b")));
    assert_eq!(with_token(&p, "/mcp", 1, &ta).status, 200);
    assert_refused(
        &with_token(&p, "/mcp", 2, &tb),
        2,
        "kid b not yet published",
    );

    // Rotation: b is published, then a withdrawn; both are picked up by refresh.
    srv.body.lock().unwrap().1 = jwks(&[&a, &b]);
    wait_until("key b", || with_token(&p, "/mcp", 3, &tb).status == 200);
    srv.body.lock().unwrap().1 = jwks(&[&b]);
    wait_until("key a withdrawn", || {
        with_token(&p, "/mcp", 4, &ta).status == 401
    });

    // A failing JWKS endpoint keeps the keys in use.
    *srv.body.lock().unwrap() = (500, "oops".into());
    let hits = srv.hits.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("two failed refreshes", || {
        srv.hits.load(std::sync::atomic::Ordering::SeqCst) >= hits + 2
    });
    assert_eq!(with_token(&p, "/mcp", 5, &tb).status, 200);
    srv.body.lock().unwrap().0 = 200;
    srv.body.lock().unwrap().1 = "{\"not\": \"a jwks\"}".into();
    let hits = srv.hits.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("two bad refreshes", || {
        srv.hits.load(std::sync::atomic::Ordering::SeqCst) >= hits + 2
    });
    assert_eq!(with_token(&p, "/mcp", 6, &tb).status, 200);
}

#[test]
fn upstream_credentials() {
    let k = ed_key("k");
    let file = temp_file("up.json", &jwks(&[&k]));
    let secret_file = temp_file("upstream-secret", "Bearer upstream-s3cret\n");
    let token = sign(&k, &claims("frank"));
    let auth = format!("Bearer {token}");
    let group = |name: &str, path: &str, m: &MockServer, extra: &str| {
        format!(
            "[[servers]]\nname = \"{name}\"\npath = \"{path}\"\nbackends = [\"{}\"]\n[servers.auth]\n{extra}\n[servers.auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"{}\"\n",
            m.url(),
            file.display()
        )
    };
    let (strip, fwd, inject, open) = (mock("s"), mock("f"), mock("i"), mock("o"));
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n{}{}{}[[servers]]\nname = \"open\"\npath = \"/open\"\nbackends = [\"{}\"]\n",
        group("strip", "/strip", &strip, ""),
        group("fwd", "/fwd", &fwd, "forward_authorization = true"),
        group(
            "inject",
            "/inject",
            &inject,
            &format!(
                "upstream_authorization = {{ file = \"{}\" }}\n[servers.health]\ninterval = \"200ms\"",
                secret_file.display()
            )
        ),
        open.url()
    );
    let p = start_proxy(&cfg, "auto");
    // Health checks carry the injected credential too (before any client request).
    wait_until("a health check", || inject.requests() > 0);
    assert_eq!(
        inject.last_header("authorization").as_deref(),
        Some("Bearer upstream-s3cret")
    );
    for path in ["/strip", "/fwd", "/inject", "/open"] {
        let r = post(&p, path, 1, &[("authorization", &auth)]);
        assert_eq!(
            r.status,
            200,
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(strip.last_header("authorization"), None);
    assert_eq!(
        fwd.last_header("authorization").as_deref(),
        Some(auth.as_str())
    );
    assert_eq!(
        inject.last_header("authorization").as_deref(),
        Some("Bearer upstream-s3cret")
    );
    // A group without [servers.auth] leaves authentication to its backend.
    assert_eq!(
        open.last_header("authorization").as_deref(),
        Some(auth.as_str())
    );
    // The injected credential is only ever sent for callers the group let in.
    assert_eq!(post(&p, "/inject", 2, &[]).status, 401);

    // Config errors name the key and never echo a secret.
    for (extra, key) in [
        (
            "forward_authorization = true\nupstream_authorization = { env = \"MCPLB_TEST_UNSET_VAR\" }",
            "servers[0].auth.upstream_authorization",
        ),
        (
            "upstream_authorization = { env = \"MCPLB_TEST_UNSET_VAR\" }",
            "servers[0].auth.upstream_authorization.env",
        ),
    ] {
        let bad = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n{}",
            group("x", "/x", &strip, extra)
        );
        let err = mcplb::Config::parse(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key), "{err}");
    }
    let bad = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"x\"\nbackends = [\"{}\"]\n[servers.auth.jwt]\nissuer = \"{ISS}\"\njwks_file = \"/nonexistent\"\nalgorithms = [\"HS256\"]\n",
        strip.url()
    );
    let err = mcplb::Config::parse(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    for needle in [
        "servers[0].auth.jwt.audience",
        "servers[0].auth.jwt.algorithms[0]",
        "servers[0].auth.jwt.jwks_file",
    ] {
        assert!(err.contains(needle), "missing {needle} in {err}");
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&secret_file);
}

#[test]
fn secrets_stay_out_of_config_view_and_logs() {
    let k = ec_key("k");
    let srv = jwks_server(jwks(&[&k]));
    // Credentials in the JWKS URL: the test server ignores them, mcplb must never show them.
    let jwks_url = srv
        .url
        .replace("http://", "http://jwksuser:jwks-pass-9f2@")
        .replace("jwks.json", "jwks.json?access_token=jwks-query-7c1");
    let upstream = temp_file("cfg-upstream", "Bearer upstream-token-5e8");
    let api_key = "api-key-plain-4d6";
    let digest = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(api_key.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let session_key = "a1".repeat(32);
    let admin_token = "admin-token-3b7";
    let env_secret = "stdio-env-secret-2a9";
    let m = mock("alpha");
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nsession_key = \"{session_key}\"\naccess_log = \"stderr\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{admin_token}\"\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [\"{}\"]\n\
         [servers.auth]\napi_keys = [\"sha256:{digest}\"]\nupstream_authorization = {{ file = \"{}\" }}\n{}\
         [[servers]]\nname = \"stdio\"\npath = \"/stdio\"\n\
         backends = [{{ command = [\"cat\"], env = {{ SECRET = \"{env_secret}\" }}, min = 0 }}]\n\
         [servers.health]\nenabled = false\n",
        m.url(),
        upstream.display(),
        jwt_table(&format!("jwks_url = \"{jwks_url}\""), "refresh = \"1s\"\nmin_refresh = \"1s\""),
    );
    let log = std::env::temp_dir().join(format!("mcplb-jwt-{}-secrets.log", std::process::id()));
    let p = start_proxy_logged(&cfg, "auto", Some(("debug", &log)));
    let token = sign(&k, &claims("grace"));
    let bad_token = sign(&ec_key("other"), &claims("mallory"));
    assert_eq!(with_token(&p, "/mcp", 1, &token).status, 200);
    assert_eq!(post(&p, "/mcp", 2, &[("x-api-key", api_key)]).status, 200);
    assert_eq!(with_token(&p, "/mcp", 3, api_key).status, 200);
    assert_eq!(with_token(&p, "/mcp", 4, &bad_token).status, 401);
    assert_eq!(with_token(&p, "/mcp", 5, "wrong-key-1f0").status, 401);
    assert_eq!(
        m.last_header("authorization").as_deref(),
        Some("Bearer upstream-token-5e8")
    );

    // The same token again: answered from the verified-token cache, no signature check.
    let auth = format!("Bearer {token}");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let body = rpc(9, "ping", json!({})).to_string();
    for _ in 0..20 {
        let h = [
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ];
        let r = c.request("POST", "/mcp", &h, body.as_bytes()).unwrap();
        assert_ne!(r.status, 401);
    }
    // A refused token sent again is refused from the cache too.
    assert_eq!(with_token(&p, "/mcp", 10, &bad_token).status, 401);
    let bearer = format!("Bearer {admin_token}");
    let admin = p.admin.unwrap();
    let stats = || {
        // The admin port closes each connection after its answer.
        let mut c = HttpClient::connect(admin).unwrap();
        let r = c.request("GET", "/stats", &[("authorization", &bearer)], b"");
        r.unwrap().json().unwrap()["counters"].clone()
    };
    wait_until("the counters", || stats()["jwt_cache_hits"] == 21);
    let counters = stats();
    assert_eq!(counters["jwt_verifications"], 2, "{counters}");
    assert_eq!(counters["auth_refused"], 3, "{counters}");
    let mut c = HttpClient::connect(admin).unwrap();
    let r = c
        .request("GET", "/config", &[("authorization", &bearer)], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    let view = r.json().unwrap();
    let auth = &view["servers"][0]["auth"];
    assert_eq!(auth["jwt"]["issuer"], ISS);
    assert_eq!(auth["jwt"]["key_ids_in_use"], json!(["k"]));
    assert_eq!(
        auth["api_keys"],
        json!([{"sha256": "<redacted>", "identity": "api-key:0"}])
    );
    assert_eq!(
        auth["upstream_authorization"]["inject"]["value"],
        "<redacted>"
    );
    assert_eq!(auth["resource_metadata"]["resource"], AUD);
    assert_eq!(view["proxy"]["session_keys"], json!(["<redacted>"]));
    assert_eq!(view["admin"]["token"], "<redacted>");
    assert_eq!(
        view["servers"][1]["backends"][0]["env"]["SECRET"],
        "<redacted>"
    );
    let shown = auth["jwt"]["jwks_url"].as_str().unwrap();
    assert!(shown.starts_with("http://***@127.0.0.1:"), "{shown}");

    // Let the access log flush and a refresh or two run, then look everywhere.
    std::thread::sleep(Duration::from_millis(2500));
    drop(p);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("\"caller\":\"grace\""), "{logged}");
    let text = format!("{view}\n{logged}");
    for secret in [
        "jwks-pass-9f2",
        "jwks-query-7c1",
        "upstream-token-5e8",
        api_key,
        digest.as_str(),
        session_key.as_str(),
        admin_token,
        env_secret,
        token.as_str(),
        bad_token.as_str(),
        "wrong-key-1f0",
    ] {
        assert!(!text.contains(secret), "secret {secret} shown in:\n{text}");
    }
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&upstream);
}

#[test]
fn metadata_passed_through_from_a_backend() {
    // A backend that does its own OAuth: mcplb checks nothing and relays its metadata.
    let doc = json!({"resource": "https://mcp.test.example/tools", "authorization_servers": [ISS]});
    let backend = jwks_server(doc.to_string());
    let url = backend.url.replace("/jwks.json", "/mcp");
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[[servers]]\nname = \"own-oauth\"\npath = \"/tools\"\nbackends = [\"{url}\"]\n\
         [servers.health]\nenabled = false\n[servers.auth]\nresource_metadata_passthrough = true\n"
    );
    let p = start_proxy(&cfg, "auto");
    // One keep-alive connection throughout: each request is answered once, in order.
    let mut c = HttpClient::connect(p.addr).unwrap();
    for path in [
        "/.well-known/oauth-protected-resource/tools",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = c.request("GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json().unwrap(), doc);
        assert_eq!(
            *backend.last_line.lock().unwrap(),
            "GET /.well-known/oauth-protected-resource/mcp HTTP/1.1"
        );
    }
    backend.body.lock().unwrap().0 = 404;
    let tools = "/.well-known/oauth-protected-resource/tools";
    assert_eq!(c.request("GET", tools, &[], b"").unwrap().status, 404);
    for path in [
        "/.well-known/oauth-protected-resource/other",
        "/nothing-here",
    ] {
        assert_eq!(
            c.request("GET", path, &[], b"").unwrap().status,
            404,
            "{path}"
        );
    }
    assert_eq!(c.request("DELETE", tools, &[], b"").unwrap().status, 404);
    backend.body.lock().unwrap().0 = 200;
    assert_eq!(
        c.request("GET", tools, &[], b"").unwrap().json().unwrap(),
        doc
    );
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[test]
fn reload_switches_the_jwks_and_keeps_keys_of_an_unchanged_url() {
    let (a, b) = (ed_key("a"), ec_key("b"));
    let srv_a = jwks_server(jwks(&[&a]));
    let srv_b = jwks_server(jwks(&[&b]));
    let m = mock("alpha");
    let cfg = |url: &str| {
        format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            config_for(&[&m], ""),
            jwt_table(
                &format!("jwks_url = \"{url}\""),
                "refresh = \"1h\"\nmin_refresh = \"1h\""
            ),
        )
    };
    let p = start_proxy(&cfg(&srv_a.url), "auto");
    let (ta, tb) = (sign(&a, &claims("a")), sign(&b, &claims("b")));
    assert_eq!(with_token(&p, "/mcp", 1, &ta).status, 200);
    assert_eq!(with_token(&p, "/mcp", 2, &tb).status, 401);

    let reload = |p: &Proxy| {
        let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
        let r = c.request("POST", "/reload", &[], b"").unwrap();
        (r.status, r.json().unwrap())
    };
    // Another JWKS URL: fetched before the new configuration goes live.
    std::fs::write(&p.config_path, cfg(&srv_b.url)).unwrap();
    let (status, v) = reload(&p);
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("servers.t.auth.jwt changed"), "{v}");
    assert_eq!(with_token(&p, "/mcp", 3, &tb).status, 200);
    assert_eq!(with_token(&p, "/mcp", 4, &ta).status, 401);

    // The same URL while its endpoint fails: the keys in use carry over.
    srv_b.body.lock().unwrap().0 = 503;
    let text = cfg(&srv_b.url).replace("leeway = \"0s\"", "leeway = \"1s\"");
    std::fs::write(&p.config_path, text).unwrap();
    let (status, v) = reload(&p);
    assert_eq!(status, 200, "{v}");
    assert_eq!(with_token(&p, "/mcp", 5, &tb).status, 200);
}

/// A loopback https server (certificate for 127.0.0.1 from a CA made here) answering every
/// GET with `body`; returns its URL and the CA's PEM file.
fn https_jwks_server(body: String, dir: &std::path::Path) -> (String, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let ca_file = dir.join("jwks-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let cfg = Arc::new(cfg);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/jwks.json", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            let mut req = Vec::new();
            let mut tmp = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&tmp[..n]),
                }
            }
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ca_file)
}

#[test]
fn jwks_over_https_verified_against_the_configured_ca() {
    let k = ec_key("tls-k");
    let dir = std::env::temp_dir().join(format!("mcplb-jwt-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (url, ca) = https_jwks_server(jwks(&[&k]), &dir);
    let m = mock("alpha");
    let token = sign(&k, &claims("tls-user"));
    // Trusting the CA: the keys load and the token passes.
    let cfg = format!(
        "{}{}",
        config_for(&[&m], ""),
        jwt_table(
            &format!("jwks_url = \"{url}\"\njwks_ca = \"{}\"", ca.display()),
            ""
        ),
    );
    let p = start_proxy(&cfg, "auto");
    assert_eq!(with_token(&p, "/mcp", 1, &token).status, 200);
    drop(p);
    // With the system roots, which do not know the test CA: no keys, every token refused.
    let cfg = format!(
        "{}{}",
        config_for(&[&m], ""),
        jwt_table(&format!("jwks_url = \"{url}\""), ""),
    );
    let p = start_proxy(&cfg, "auto");
    assert_refused(
        &with_token(&p, "/mcp", 2, &token),
        2,
        "JWKS from an untrusted server",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_algorithm_in_the_readme_verifies() {
    use p384::pkcs8::EncodePrivateKey;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    // One RSA key without `alg` serves the six RSA algorithms; ES384 needs a P-384 key.
    let k = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let rsa_enc = EncodingKey::from_rsa_der(k.to_pkcs1_der().unwrap().as_bytes());
    let p384 = p384::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let point = p384.verifying_key().to_encoded_point(false);
    let es384_enc = EncodingKey::from_ec_der(p384.to_pkcs8_der().unwrap().as_bytes());
    let (es, ed) = (ec_key("es256"), ed_key("eddsa"));
    let text = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "n": B64.encode(k.n().to_bytes_be()), "e": B64.encode(k.e().to_bytes_be())},
        {"kty": "EC", "crv": "P-384", "kid": "es384", "alg": "ES384",
            "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())},
        es.jwk, ed.jwk,
    ]});
    let file = temp_file("all-algs.json", &text.to_string());
    let m = mock("alpha");
    let cfg = format!(
        "{}{}",
        config_for(&[&m], ""),
        jwt_table(
            &format!("jwks_file = \"{}\"", file.display()),
            "algorithms = [\"RS256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES256\", \"ES384\", \"EdDSA\"]"
        ),
    );
    let p = start_proxy(&cfg, "auto");
    let sign_with = |alg: Algorithm, kid: &str, enc: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims(&format!("{alg:?}")), enc).unwrap()
    };
    let mut tokens = vec![
        (
            Algorithm::ES384,
            sign_with(Algorithm::ES384, "es384", &es384_enc),
        ),
        (Algorithm::ES256, sign(&es, &claims("ES256"))),
        (Algorithm::EdDSA, sign(&ed, &claims("EdDSA"))),
    ];
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        tokens.push((alg, sign_with(alg, "rsa", &rsa_enc)));
    }
    for (i, (alg, token)) in tokens.iter().enumerate() {
        let r = with_token(&p, "/mcp", i as u64, token);
        assert_eq!(
            r.status,
            200,
            "{alg:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A key bound to ES384 does not verify another algorithm's token under its kid.
    let wrong = sign_with(Algorithm::ES256, "es384", &es.enc);
    assert_refused(
        &with_token(&p, "/mcp", 50, &wrong),
        50,
        "ES256 under an ES384 key",
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn iss_must_be_one_string_equal_to_the_issuer() {
    let k = ed_key("k");
    let file = temp_file("iss.json", &jwks(&[&k]));
    let m = mock("alpha");
    let cfg = format!(
        "{}{}[servers.health]\nenabled = false\n",
        config_for(&[&m], ""),
        jwt_table(&format!("jwks_file = \"{}\"", file.display()), ""),
    );
    let p = start_proxy(&cfg, "auto");
    let with_iss = |iss: serde_json::Value| {
        let mut c = claims("iris");
        c["iss"] = iss;
        sign(&k, &c)
    };
    // Correctly signed, but `iss` is a list: refused even when it holds the issuer.
    for (i, iss) in [
        json!(["https://other-tenant.example", ISS]),
        json!([ISS]),
        json!([ISS, ISS]),
    ]
    .into_iter()
    .enumerate()
    {
        let r = with_token(&p, "/mcp", i as u64, &with_iss(iss.clone()));
        assert_refused(&r, i as u64, &format!("iss {iss}"));
        let wa = r.header("www-authenticate").unwrap_or("");
        assert!(wa.contains("`iss` is not a single string"), "{wa}");
    }
    assert_eq!(m.requests(), 0, "a refused request reached the backend");
    assert_eq!(with_token(&p, "/mcp", 9, &with_iss(json!(ISS))).status, 200);
    let _ = std::fs::remove_file(&file);
}

/// POSTs an initialize with `token` on a connection from the local address `from` (another
/// loopback address: mcplb sees another client).
fn with_token_from(p: &Proxy, from: [u8; 4], id: u64, token: &str) -> mcplb::demo::Response {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local = std::net::SocketAddr::from((from, 0));
    sock.bind(&local.into()).unwrap();
    sock.connect(&p.addr.into()).unwrap();
    let mut c = HttpClient::from_stream(sock.into(), Duration::from_secs(30)).unwrap();
    let body = rpc(
        id,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}}),
    );
    let auth = format!("Bearer {token}");
    let h = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("authorization", auth.as_str()),
    ];
    c.request("POST", "/mcp", &h, body.to_string().as_bytes())
        .unwrap()
}

#[test]
fn failed_verifications_spend_a_per_address_budget_checked_before_the_signature() {
    let k = ec_key("k");
    let file = temp_file("budget.json", &jwks(&[&k]));
    let m = mock("alpha");
    // One worker, so that "cached on this core" is every core.
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [\"{}\"]\n{}\
         [servers.health]\nenabled = false\n",
        m.url(),
        jwt_table(
            &format!("jwks_file = \"{}\"", file.display()),
            "failure_budget = { burst = 3, rate = 0.001 }"
        ),
    );
    let p = start_proxy(&cfg, "auto");
    const FLOOD: [u8; 4] = [127, 0, 0, 2];
    const OTHER: [u8; 4] = [127, 0, 0, 1];
    let alice = sign(&k, &claims("alice"));
    assert_eq!(with_token_from(&p, FLOOD, 1, &alice).status, 200);

    // A flood of distinct forged tokens (another key claiming kid "k") from one address: the
    // first 3 are verified and refused (401), every later one is refused unverified (429).
    let impostor = ec_key("k");
    for i in 0..10u64 {
        let forged = sign(&impostor, &claims(&format!("mallory-{i}")));
        let r = with_token_from(&p, FLOOD, 100 + i, &forged);
        if i < 3 {
            assert_refused(&r, 100 + i, "forged, within the budget");
            continue;
        }
        assert_eq!(
            r.status,
            429,
            "forged #{i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("retry-after"), Some("1000"));
        assert_eq!(r.header("www-authenticate"), None);
        let j = r.json().unwrap();
        assert_eq!(j["id"], 100 + i, "{j}");
        assert!(
            j["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("failed token verifications"),
            "{j}"
        );
    }
    // A verdict already made on this core costs nothing from the budget: alice still gets in
    // from the flooding address. A token never seen needs a signature check: refused there
    // unverified, accepted from another address.
    assert_eq!(with_token_from(&p, FLOOD, 2, &alice).status, 200);
    let bob = sign(&k, &claims("bob"));
    assert_eq!(with_token_from(&p, FLOOD, 3, &bob).status, 429);
    assert_eq!(with_token_from(&p, OTHER, 4, &bob).status, 200);
    assert_eq!(with_token_from(&p, OTHER, 5, &bob).status, 200);

    let admin = p.admin.unwrap();
    let get = |path: &str| {
        let mut c = HttpClient::connect(admin).unwrap();
        c.request("GET", path, &[], b"").unwrap().json().unwrap()
    };
    wait_until("the counters", || {
        get("/stats")["counters"]["jwt_cache_hits"] == 2
    });
    let counters = get("/stats")["counters"].clone();
    // alice, 3 forged tokens, bob from the other address: 5 signature checks for 15 tokens.
    assert_eq!(counters["jwt_verifications"], 5, "{counters}");
    assert_eq!(counters["auth_throttled"], 8, "{counters}");
    assert_eq!(counters["auth_refused"], 3, "{counters}");
    assert_eq!(m.requests(), 4, "only accepted callers reach the backend");
    let budget = &get("/config")["servers"][0]["auth"]["jwt"]["failure_budget"];
    assert_eq!(budget["burst"], 3, "{budget}");
    assert_eq!(budget["enabled"], true, "{budget}");
    let _ = std::fs::remove_file(&file);
}
