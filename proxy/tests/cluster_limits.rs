//! Cluster rate limits on a real `redis-server`: two replicas of mcplb share one `cluster`
//! rule's rate (the total admitted stays within the rule's bound, not twice it); with Redis
//! gone each rule applies `on_unavailable` (`local`: this replica's share; `deny`: 429), the
//! state change is counted and logged, and mcplb reconnects when Redis is back; a "Redis"
//! that answers garbage is an error (counted), never a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Two groups of rules on tool calls: `whoami` limited in the cluster (with `on_unavailable`
/// as given), `echo` as `echo_scope`.
fn config(m: &MockServer, redis: &str, whoami: &str, extra_rules: &str) -> String {
    format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[cluster]\nredis = \"{redis}\"\nprefix = \"t{}\"\n\n\
         [[limits]]\ntool = \"whoami\"\n{whoami}\n{extra_rules}",
        config_for(&[m], ""),
        std::process::id(),
    )
}

fn stats(p: &Proxy) -> serde_json::Value {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    c.request("GET", "/stats", &[], b"")
        .unwrap()
        .json()
        .unwrap()
}

fn metrics(p: &Proxy) -> String {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    String::from_utf8(c.request("GET", "/metrics", &[], b"").unwrap().body).unwrap()
}

fn status(p: &Proxy, tool: &str) -> u16 {
    stateless_tool_call(&mut HttpClient::connect(p.addr).unwrap(), tool, &[]).status
}

/// Calls `tool` on every proxy from two threads each, for `secs`: (admitted, refused).
fn hammer(proxies: &[&Proxy], tool: &str, secs: f64) -> (u64, u64) {
    let even: Vec<(&Proxy, usize)> = proxies.iter().map(|p| (*p, 2)).collect();
    hammer_uneven(&even, tool, secs)
}

/// Calls `tool` on each proxy from as many threads as given, for `secs`: (admitted, refused).
fn hammer_uneven(proxies: &[(&Proxy, usize)], tool: &str, secs: f64) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        for (p, threads) in proxies {
            for _ in 0..*threads {
                let (ok, refused, stop, addr) = (ok.clone(), refused.clone(), stop.clone(), p.addr);
                s.spawn(move || {
                    let mut c = HttpClient::connect(addr).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match stateless_tool_call(&mut c, tool, &[]).status {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            429 => refused.fetch_add(1, Ordering::Relaxed),
                            other => panic!("unexpected status {other}"),
                        };
                    }
                });
            }
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed))
}

#[test]
fn two_replicas_share_one_cluster_rate() {
    let redis = RedisServer::start();
    let m = mock("alpha");
    let cfg = config(
        &m,
        &redis.url(),
        "rate = 20\nburst = 10\nscope = \"cluster\"",
        "",
    );
    let a = start_proxy(&cfg, "auto");
    let b = start_proxy(&cfg, "legacy");
    wait_until("both replicas to reach Redis", || {
        stats(&a)["cluster"]["available"] == true && stats(&b)["cluster"]["available"] == true
    });
    let secs = 4.0;
    let t = Instant::now();
    let (ok, refused) = hammer(&[&a, &b], "whoami", secs);
    let w = t.elapsed().as_secs_f64();
    // The bound (ratelimit::lease): rate × W + burst + replicas × batch (2 here: 20/10 and
    // 10/4) for the two replicas together; each alone would admit rate × W + burst, together
    // twice that.
    let bound = (20.0 * w + 10.0 + 2.0 * 2.0) as u64;
    eprintln!("cluster rate 20/s burst 10, 2 replicas, {w:.2} s: {ok} admitted, {refused} refused (bound {bound})");
    assert!(ok <= bound, "{ok} admitted in {w:.1} s, bound {bound}");
    // And the limit is not starved: at least half the rate over the window.
    assert!(ok as f64 >= 20.0 * secs * 0.85, "{ok} admitted in {w:.1} s");
    assert!(refused > 0);
    // Both replicas leased from Redis, and both served some of it.
    for p in [&a, &b] {
        let s = stats(p);
        assert!(s["cluster"]["tokens_granted"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["cluster"]["replicas"], 2, "{s}");
        let rule = &s["limits"][0];
        assert_eq!(
            (rule["rule"].as_u64(), rule["scope"].as_str()),
            (Some(0), Some("cluster"))
        );
        assert!(rule["admitted"].as_u64().unwrap() > 0, "{s}");
    }
    // Calls no rule matches are not limited.
    assert_eq!(status(&a, "echo"), 200);
}

/// Three replicas under uneven load (six client threads on the first, one on each of the
/// others): the total admitted stays within the rule's bound and above 85 % of rate × W, and
/// the lightly loaded replicas are not starved by the busy one.
#[test]
fn three_replicas_under_uneven_load_hold_the_cluster_rate() {
    let redis = RedisServer::start();
    let m = mock("alpha");
    let cfg = config(
        &m,
        &redis.url(),
        "rate = 30\nburst = 12\nscope = \"cluster\"",
        "",
    );
    let a = start_proxy(&cfg, "auto");
    let b = start_proxy(&cfg, "legacy");
    let c = start_proxy(&cfg, "auto");
    wait_until("the three replicas to reach Redis", || {
        [&a, &b, &c]
            .iter()
            .all(|p| stats(p)["cluster"]["available"] == true)
    });
    let secs = 4.0;
    let t = Instant::now();
    let (ok, refused) = hammer_uneven(&[(&a, 6), (&b, 1), (&c, 1)], "whoami", secs);
    let w = t.elapsed().as_secs_f64();
    // rate × W + burst + replicas × batch (batch: min(30/10, 12/4) = 3).
    let bound = (30.0 * w + 12.0 + 3.0 * 3.0) as u64;
    eprintln!("cluster rate 30/s burst 12, 3 replicas 6:1:1, {w:.2} s: {ok} admitted, {refused} refused (bound {bound})");
    assert!(ok <= bound, "{ok} admitted in {w:.1} s, bound {bound}");
    assert!(ok as f64 >= 30.0 * secs * 0.85, "{ok} admitted in {w:.1} s");
    assert!(refused > 0);
    for p in [&a, &b, &c] {
        let s = stats(p);
        assert_eq!(s["cluster"]["replicas"], 3, "{s}");
        assert!(s["limits"][0]["admitted"].as_u64().unwrap() > 0, "{s}");
    }
}

#[test]
fn redis_gone_applies_on_unavailable_then_reconnects() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let m = mock("alpha");
    let log = std::env::temp_dir().join(format!("mcplb-cluster-{}.log", std::process::id()));
    let cfg = config(
        &m,
        &redis.url(),
        "rate = 1000\nburst = 1000\nscope = \"cluster\"\non_unavailable = \"local\"",
        "[[limits]]\ntool = \"echo\"\nrate = 1000\nscope = \"cluster\"\non_unavailable = \"deny\"\n\
         [[limits]]\ntool = \"echo\"\nrate = 1000\n",
    );
    let p = start_proxy_logged(&cfg, "auto", Some(("info", &log)));
    wait_until("Redis reachable", || {
        stats(&p)["cluster"]["available"] == true
    });
    assert_eq!(status(&p, "whoami"), 200);
    assert_eq!(status(&p, "echo"), 200);

    redis.stop();
    // The next lease or heartbeat fails: on_unavailable applies.
    wait_until("Redis seen unavailable", || {
        let _ = status(&p, "echo");
        stats(&p)["cluster"]["available"] == false
    });
    assert_eq!(status(&p, "whoami"), 200, "local: this replica's share");
    assert_eq!(status(&p, "echo"), 429, "deny");
    let down = metrics(&p);
    assert!(down.contains("mcplb_cluster_available 0"), "{down}");

    let _redis = RedisServer::start_on(port);
    wait_until("mcplb to reconnect", || {
        stats(&p)["cluster"]["available"] == true
    });
    assert_eq!(status(&p, "echo"), 200);
    let s = stats(&p);
    assert!(s["cluster"]["state_changes"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["cluster"]["errors"].as_u64().unwrap() >= 1, "{s}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("Redis unavailable, applying on_unavailable"),
        "{text}"
    );
    assert!(
        text.matches("Redis reachable, leasing tokens").count() >= 2,
        "{text}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_redis_answering_garbage_is_an_error_not_a_crash() {
    use std::io::{Read, Write};
    // A "Redis" that answers every command with bytes that are not a reply it expects.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = fake.local_addr().unwrap().port();
    let served = Arc::new(AtomicU64::new(0));
    {
        let served = served.clone();
        std::thread::spawn(move || {
            for (n, conn) in fake.incoming().enumerate() {
                let Ok(mut s) = conn else { continue };
                served.fetch_add(1, Ordering::Relaxed);
                let answer: &[u8] = match n % 3 {
                    0 => b"*2\r\n:1\r\n",
                    1 => b"%%%% not resp at all\r\n",
                    _ => b"*2\r\n$3\r\nabc\r\n:-7\r\n",
                };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(answer).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let m = mock("alpha");
    let cfg = config(
        &m,
        &format!("redis://127.0.0.1:{port}"),
        "rate = 100\nscope = \"cluster\"\non_unavailable = \"deny\"",
        "",
    );
    let mut p = start_proxy(&cfg, "auto");
    wait_until("a few tries of the garbage", || {
        served.load(Ordering::Relaxed) >= 3 && stats(&p)["cluster"]["errors"].as_u64() >= Some(3)
    });
    assert_eq!(stats(&p)["cluster"]["available"], false);
    assert_eq!(status(&p, "whoami"), 429);
    assert_eq!(status(&p, "echo"), 200);
    assert!(p.child.try_wait().unwrap().is_none(), "mcplb exited");
}

#[test]
fn cluster_settings_are_checked_by_name() {
    let m = mock("alpha");
    let bad = format!(
        "{}\n[cluster]\nredis = \"http://x\"\npassword_env = \"MCPLB_TEST_NO_SUCH_VAR\"\n\
         on_unavailable = \"maybe\"\n\n[[limits]]\ntool = \"a\"\nrate = 1\nscope = \"galaxy\"\n\
         [[limits]]\ntool = \"b\"\nrate = 1\non_unavailable = \"deny\"\n",
        config_for(&[&m], "")
    );
    let err = match mcplb::Config::parse(&bad) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    for key in [
        "cluster.redis: http://x: must start with redis:// or rediss://",
        "cluster.password_env: the environment variable MCPLB_TEST_NO_SUCH_VAR is not set",
        "cluster.on_unavailable: \"maybe\"",
        "limits[0].scope: \"galaxy\"",
        "limits[1].on_unavailable: only for scope = \"cluster\"",
    ] {
        assert!(err.contains(key), "missing {key} in {err}");
    }
    let no_cluster = format!(
        "{}\n[[limits]]\ntool = \"a\"\nrate = 1\nscope = \"cluster\"\n",
        config_for(&[&m], "")
    );
    let err = mcplb::Config::parse(&no_cluster).err().unwrap().to_string();
    assert!(
        err.contains("limits[0].scope: \"cluster\" needs a [cluster] table"),
        "{err}"
    );
    // A password from a file, never shown.
    let file = std::env::temp_dir().join(format!("mcplb-redis-pw-{}", std::process::id()));
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    let ok = format!(
        "{}\n[cluster]\nredis = \"rediss://user:inline-pw@127.0.0.1:6380/0\"\npassword_file = \"{}\"\n",
        config_for(&[&m], ""),
        file.display()
    );
    let c = mcplb::Config::parse(&ok).unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.password.as_deref(), Some("s3cret-pw"));
    let shown = format!("{:?} {}", c, mcplb::config::view::redacted_json(&c));
    assert!(
        !shown.contains("s3cret") && !shown.contains("inline-pw"),
        "{shown}"
    );
    let _ = std::fs::remove_file(&file);
}

/// `rediss://`: the store over TLS (a real redis-server with a certificate from a test CA,
/// trusted through `SSL_CERT_FILE`): mcplb reaches it, leases tokens and holds the rule.
#[test]
fn a_tls_redis_is_reached_over_rediss() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("mcplb-rediss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (dir.join("ca.pem"), dir.join("r.pem"), dir.join("r.key"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(&cert_pem)
        .arg("--tls-key-file")
        .arg(&key_pem)
        .arg("--tls-ca-cert-file")
        .arg(&ca_pem)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let m = mock("alpha");
    let cfg = config(
        &m,
        &format!("rediss://127.0.0.1:{port}"),
        "rate = 20\nburst = 10\nscope = \"cluster\"\non_unavailable = \"deny\"",
        "",
    );
    let ca_file = ca_pem.to_str().unwrap();
    let p = start_proxy_env(&cfg, "auto", None, &[("SSL_CERT_FILE", ca_file)]);
    wait_until("mcplb to reach the TLS Redis", || {
        stats(&p)["cluster"]["available"] == true
    });
    let secs = 2.0;
    let t = Instant::now();
    let (ok, refused) = hammer(&[&p], "whoami", secs);
    let w = t.elapsed().as_secs_f64();
    let bound = (20.0 * w + 10.0 + 2.0) as u64;
    assert!(
        ok <= bound && ok as f64 >= 20.0 * secs * 0.85,
        "{ok} admitted in {w:.1} s"
    );
    assert!(refused > 0);
    let s = stats(&p);
    assert!(s["cluster"]["tokens_granted"].as_u64().unwrap() > 0, "{s}");
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Redis that requires a password (`requirepass`): with the password from a file (a trailing
/// newline, as editors and `kubectl create secret --from-file` leave it) mcplb authenticates,
/// leases tokens and holds the rule; a replica given a wrong password (from the environment)
/// stays unavailable, says why on `/stats` without the password, and applies `on_unavailable`
/// (`deny`: 429) without a crash.
#[test]
fn a_redis_with_a_password_is_reached_with_it_and_refused_without() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = "s3cret pass#1";
    let mut redis = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--requirepass", secret, "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    wait_until("redis-server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let file = std::env::temp_dir().join(format!("mcplb-redis-pass-{}", std::process::id()));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let m = mock("alpha");
    let rule = "rate = 20\nburst = 10\nscope = \"cluster\"\non_unavailable = \"deny\"";
    let url = format!("redis://127.0.0.1:{port}");
    let good = config(&m, &url, rule, "").replace(
        "\n[cluster]\n",
        &format!("\n[cluster]\npassword_file = \"{}\"\n", file.display()),
    );
    let p = start_proxy(&good, "auto");
    wait_until("mcplb to authenticate to Redis", || {
        stats(&p)["cluster"]["available"] == true
    });
    let secs = 2.0;
    let t = Instant::now();
    let (ok, refused) = hammer(&[&p], "whoami", secs);
    let w = t.elapsed().as_secs_f64();
    assert!(
        ok <= (20.0 * w + 10.0 + 2.0) as u64 && ok as f64 >= 20.0 * secs * 0.85,
        "{ok} admitted in {w:.1} s"
    );
    assert!(refused > 0);
    assert!(stats(&p)["cluster"]["tokens_granted"].as_u64().unwrap() > 0);

    let var = format!("MCPLB_TEST_REDIS_PW_{}", std::process::id());
    let bad = config(&m, &url, rule, "").replace(
        "\n[cluster]\n",
        &format!("\n[cluster]\npassword_env = \"{var}\"\ntimeout = \"200ms\"\n"),
    );
    let q = start_proxy_env(&bad, "auto", None, &[(var.as_str(), "not-the-password")]);
    wait_until("the wrong password to be counted as an error", || {
        stats(&q)["cluster"]["errors"].as_u64().unwrap_or(0) >= 1
    });
    let s = stats(&q);
    assert_eq!(s["cluster"]["available"], false, "{s}");
    let why = s["cluster"]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.to_ascii_lowercase().contains("pass") || why.to_ascii_lowercase().contains("auth"),
        "{s}"
    );
    assert!(!s.to_string().contains("not-the-password"), "{s}");
    assert_eq!(status(&q, "whoami"), 429);
    // The one that knows the password is undisturbed.
    assert_eq!(status(&p, "echo"), 200);
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_file(&file);
}
