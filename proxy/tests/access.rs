//! Who gets in, through a real `mcplb`: an `Origin` allow-list (403) and API keys stored only
//! as SHA-256 digests (401 with `WWW-Authenticate`); the key never reaches the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn post(c: &mut HttpClient, headers: &[(&str, &str)]) -> mcplb::demo::Response {
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(headers);
    let body = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}),
    );
    c.request("POST", "/mcp", &h, body.to_string().as_bytes())
        .unwrap()
}

#[test]
fn origin_allow_list_and_api_keys() {
    let m = mock("alpha");
    // sha256("s3cret-key")
    let digest = "e1f7ac7de2a8a1c3c6b5b5bfd4f7b0b07a7f6f1f1e0b3b0d3c2f5f0a9c7a3e11";
    let real = {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"s3cret-key")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    assert_ne!(
        digest, real,
        "placeholder digest must not accidentally match"
    );
    let cfg = format!(
        "{}allowed_origins = [\"https://app.example.com\"]\n[servers.auth]\napi_keys = [\"sha256:{real}\", \"sha256:{digest}\"]\n",
        config_for(&[&m], "")
    );
    let p = start_proxy(&cfg, "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();

    let r = post(&mut c, &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(r.json().unwrap()["error"]["code"], -32600);
    let mut c = HttpClient::connect(p.addr).unwrap();
    assert_eq!(
        post(&mut c, &[("authorization", "Bearer wrong")]).status,
        401
    );
    let mut c = HttpClient::connect(p.addr).unwrap();
    let ok = post(&mut c, &[("authorization", "Bearer s3cret-key")]);
    assert_eq!(ok.status, 200);
    assert_eq!(post(&mut c, &[("x-api-key", "s3cret-key")]).status, 200);
    // mcplb's key is never forwarded to the backend.
    assert_eq!(m.last_header("authorization"), None);

    // Origin: allowed passes, others get 403 before reaching the backend, absent passes.
    let key = ("x-api-key", "s3cret-key");
    assert_eq!(
        post(&mut c, &[key, ("origin", "https://app.example.com")]).status,
        200
    );
    let before = m.requests();
    let r = post(&mut c, &[key, ("origin", "https://evil.example")]);
    assert_eq!(r.status, 403);
    assert_eq!(m.requests(), before);

    // A digest that is not 64 hex digits is a config error naming the key.
    let bad = format!(
        "{}[servers.auth]\napi_keys = [\"plaintext-key\"]\n",
        config_for(&[&m], "")
    );
    let err = mcplb::Config::parse(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("servers[0].auth.api_keys[0]"), "{err}");
}

#[test]
fn connections_per_client_address_are_capped() {
    let m = mock("alpha");
    let p = start_proxy(&config_for(&[&m], "max_connections_per_ip = 3"), "auto");
    let mut held: Vec<HttpClient> = (0..3)
        .map(|_| HttpClient::connect(p.addr).unwrap())
        .collect();
    for c in &mut held {
        assert_eq!(post(c, &[]).status, 200);
    }
    // The fourth from the same address is closed at once, before any byte is read.
    let mut extra = HttpClient::connect(p.addr).unwrap();
    let body = rpc(1, "ping", json!({})).to_string();
    let r = extra.request(
        "POST",
        "/mcp",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert!(r.is_err(), "fourth connection was served");
    // Closing one frees a place.
    held.pop();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut again = HttpClient::connect(p.addr).unwrap();
    assert_eq!(post(&mut again, &[]).status, 200);
}
