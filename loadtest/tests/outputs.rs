//! Tests of `--hgrm`, `--svg` and `--scenario` against the mock backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use loadtest::{output, run_load, LoadOptions, Scenario};
use mock::{MockConfig, MockServer};

fn mock() -> MockServer {
    MockServer::start(MockConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn report(server: &MockServer) -> loadtest::LoadReport {
    run_load(LoadOptions {
        url: server.url(),
        connections: 4,
        threads: 2,
        warmup: Duration::ZERO,
        requests: Some(400),
        timeout: Duration::from_secs(5),
        ..LoadOptions::default()
    })
    .unwrap()
}

#[test]
fn hgrm_parses() {
    let server = mock();
    let r = report(&server);
    assert_eq!(r.ok, 400, "{r}");
    // The calls, and each connection's session set-up (initialize, notifications/initialized).
    assert_eq!(r.exchanges, 400 + 4 * 2);
    assert_eq!(r.to_json()["exchanges"], 408);
    let text = output::hgrm(&r.histogram);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    assert_eq!(lines.next().unwrap(), "");
    let mut rows: Vec<(f64, f64, u64)> = Vec::new();
    let mut footer = Vec::new();
    for l in lines {
        if l.starts_with("#[") {
            footer.push(l);
            continue;
        }
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert!(cols.len() == 4 || cols.len() == 3, "{l}");
        let value: f64 = cols[0].parse().unwrap();
        let pct: f64 = cols[1].parse().unwrap();
        let count: u64 = cols[2].parse().unwrap();
        if cols.len() == 4 {
            let inv: f64 = cols[3].parse().unwrap();
            assert!((inv - 1.0 / (1.0 - pct)).abs() / inv < 0.01, "{l}");
        }
        // Value in ms, right-aligned in 12 columns with 3 decimals.
        assert_eq!(l.find('.').unwrap(), 8, "{l}");
        rows.push((value, pct, count));
    }
    assert!(rows.len() > 10, "{text}");
    for w in rows.windows(2) {
        assert!(w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2);
    }
    let last = rows.last().unwrap();
    assert!(last.1 >= 0.999, "{text}");
    assert_eq!(last.2, 400);
    let max_ms = r.histogram.max() as f64 / 1000.0;
    assert!((last.0 - max_ms).abs() < 0.01, "{text}");
    assert_eq!(footer.len(), 3, "{text}");
    assert!(footer[0].starts_with("#[Mean    = ") && footer[0].contains("StdDeviation   = "));
    assert!(footer[1].starts_with("#[Max     = "));
    let total: u64 = footer[1]
        .rsplit('=')
        .next()
        .unwrap()
        .trim_end_matches(']')
        .trim()
        .parse()
        .unwrap();
    assert_eq!(total, 400);
    assert!(footer[2].starts_with("#[Buckets = ") && footer[2].contains("SubBuckets"));
}

/// A minimal well-formedness check: tags balance, attributes are quoted.
fn check_xml(s: &str) -> Vec<String> {
    let body = s
        .strip_prefix("<?xml")
        .and_then(|r| r.split_once("?>"))
        .unwrap()
        .1;
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find('<') {
        assert!(!rest[..i].contains('>'), "stray > in text");
        let j = rest[i..].find('>').unwrap() + i;
        let tag = &rest[i + 1..j];
        assert!(!tag.contains('<'), "< inside tag: {tag}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else {
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            seen.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[j + 1..];
    }
    assert!(rest.trim().is_empty());
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    seen
}

#[test]
fn svg_is_well_formed() {
    let server = mock();
    let r = report(&server);
    let svg = output::svg(&r);
    let tags = check_xml(&svg);
    assert_eq!(tags[0], "svg");
    assert!(tags.iter().any(|t| t == "polyline"));
    assert!(!svg.contains("<script") && !svg.contains("@font-face") && !svg.contains("href"));
    for label in [
        "0%",
        "90%",
        "99%",
        "99.9%",
        "99.99%",
        "99.999%",
        "Latency (ms)",
    ] {
        assert!(svg.contains(&format!(">{label}<")), "{label}");
    }
    assert!(svg.contains(&server.url()) && svg.contains("400 requests"));
    let points = svg
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let pts: Vec<(f64, f64)> = points
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert!(pts.len() > 10);
    // x grows with the percentile, y (SVG down) never goes up in latency.
    for w in pts.windows(2) {
        assert!(w[0].0 <= w[1].0 && w[0].1 >= w[1].1, "{points}");
    }
}

#[test]
fn scenario_mix_proportions() {
    let server = mock();
    let text = format!(
        r#"
url = "{}"
connections = 4
threads = 2
requests = 1000
warmup = 0
timeout = "5s"
sessions = 4
[[calls]]
method = "tools/call"
tool = "echo"
arguments = {{ text = "hello" }}
weight = 6
[[calls]]
method = "tools/call"
tool = "whoami"
weight = 3
[[calls]]
method = "tools/list"
weight = 1
"#,
        server.url()
    );
    let sc = Scenario::from_toml(&text).unwrap();
    let opts = sc.apply(LoadOptions::default()).unwrap();
    assert_eq!(opts.sessions, Some(4));
    assert_eq!(opts.connections, 4);
    assert_eq!(opts.requests, Some(1000));
    assert_eq!(opts.calls.len(), 3);
    let r = run_load(opts).unwrap();
    assert_eq!(r.ok, 1000, "{r}");
    assert_eq!(r.errors.total(), 0, "{r}");
    let echo = server.tool_calls("echo");
    let whoami = server.tool_calls("whoami");
    // 4 initialize + 4 notifications/initialized.
    let list = server.requests() - 8 - echo - whoami;
    assert_eq!(echo + whoami + list, 1000);
    // Weighted round robin per connection: within one period (10) per
    // connection of the exact 600/300/100.
    assert!(echo.abs_diff(600) <= 24, "echo {echo}");
    assert!(whoami.abs_diff(300) <= 12, "whoami {whoami}");
    assert!(list.abs_diff(100) <= 4, "list {list}");
    let counts: Vec<u64> = r.calls.iter().map(|c| c.ok).collect();
    assert_eq!(counts, vec![echo, whoami, list]);
    assert_eq!(r.calls[0].label, "tools/call echo");
    let j = r.to_json();
    assert_eq!(j["calls"][2]["call"], "tools/list");
    assert_eq!(j["calls"][2]["ok"], list);

    // Fewer sessions than connections, or sessions with stateless requests,
    // are refused before anything is sent.
    for text in [
        "connections = 3\nsessions = 2",
        "sessions = 80\nstateless = true",
    ] {
        let bad = Scenario::from_toml(text).unwrap();
        let o = bad.apply(LoadOptions::default()).unwrap();
        let err = run_load(LoadOptions {
            url: server.url(),
            ..o
        });
        assert!(err.is_err(), "{text}");
    }
    // Unknown keys and bad durations are rejected.
    assert!(Scenario::from_toml("conections = 2").is_err());
    let d = Scenario::from_toml("duration = \"5x\"").unwrap();
    assert!(d.apply(LoadOptions::default()).is_err());
    let d = Scenario::from_toml("duration = 1.5").unwrap();
    assert_eq!(
        d.apply(LoadOptions::default()).unwrap().duration,
        Duration::from_millis(1500)
    );
}
