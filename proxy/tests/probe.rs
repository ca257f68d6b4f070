//! `mcplb probe` (the container health check of `deploy/`) against a real `mcplb`: it reads the
//! admin address and token from the config file, exits 0 on 200 and 1 otherwise, saying what
//! answered; and `/metrics`' `mcplb_backend_state` follows a drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::*;

fn probe(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mcplb"))
        .arg("probe")
        .args(args)
        .env_remove("MCPLB_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback port free a moment ago: `probe --config` needs the port the file names.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one `mcplb_backend_state` sample in a `/metrics` text.
fn state_sample(metrics: &str, backend: &str, state: &str) -> Option<u8> {
    let series =
        format!("mcplb_backend_state{{server=\"t\",backend=\"{backend}\",state=\"{state}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.parse().ok())
}

#[test]
fn probe_follows_health_and_readiness_with_the_configs_token() {
    let m = mock("a");
    let port = free_port();
    let cfg = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"pr0be-t0ken\"\n",
        config_for(&[&m], "")
    );
    let p = start_proxy(&cfg, "auto");
    assert_eq!(p.admin.unwrap().port(), port);
    let file = p.config_path.to_str().unwrap();

    let ok = probe(&["--config", file, "/healthz"]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(text(&ok.stdout).trim(), "ok");
    let ready = probe(&["--config", file, "/readyz"]);
    assert!(ready.status.success(), "{ready:?}");
    assert!(text(&ready.stdout).contains("\"ready\":true"), "{ready:?}");

    // Without the token the admin port refuses, and the probe says so.
    let admin = format!("127.0.0.1:{port}");
    let refused = probe(&["--admin", &admin, "/healthz"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("answered 401"),
        "{refused:?}"
    );
    let with_token = probe(&["--admin", &admin, "--token", "pr0be-t0ken", "/healthz"]);
    assert!(with_token.status.success(), "{with_token:?}");

    // The only backend drained: not ready (503), while still alive.
    let metrics = |c: &mut HttpClient| {
        let r = c
            .request(
                "GET",
                "/metrics",
                &[("authorization", "Bearer pr0be-t0ken")],
                b"",
            )
            .unwrap();
        String::from_utf8(r.body).unwrap()
    };
    let name = m.addr().to_string();
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let before = metrics(&mut c);
    assert_eq!(state_sample(&before, &name, "healthy"), Some(1), "{before}");
    assert_eq!(
        state_sample(&before, &name, "draining"),
        Some(0),
        "{before}"
    );
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let drained = c
        .request(
            "POST",
            &format!("/backends/{name}/drain"),
            &[("authorization", "Bearer pr0be-t0ken")],
            b"",
        )
        .unwrap();
    assert_eq!(drained.status, 200);
    let not_ready = probe(&["--config", file, "/readyz"]);
    assert_eq!(not_ready.status.code(), Some(1), "{not_ready:?}");
    assert!(
        text(&not_ready.stderr).contains("answered 503"),
        "{not_ready:?}"
    );
    assert!(probe(&["--config", file, "/healthz"]).status.success());
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let after = metrics(&mut c);
    assert_eq!(state_sample(&after, &name, "draining"), Some(1), "{after}");
    assert_eq!(state_sample(&after, &name, "healthy"), Some(0), "{after}");
}

#[test]
fn probe_fails_clearly_without_an_admin_port() {
    let m = mock("a");
    let p = start_proxy(&config_for(&[&m], ""), "auto");
    let file = p.config_path.to_str().unwrap();
    let out = probe(&["--config", file, "/healthz"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no admin.listen"), "{out:?}");
    // Nothing listens there: refused, said as such.
    let port = free_port().to_string();
    let out = probe(&["--admin", &format!("127.0.0.1:{port}"), "/healthz"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("cannot connect"), "{out:?}");
    // A path must be a path.
    let out = probe(&["--config", file, "healthz"]);
    assert!(!out.status.success(), "{out:?}");
}
