//! Hot reload of a real `mcplb` (SIGHUP and `POST /reload`): under load, with sessions open
//! and an SSE tool call streaming, the configuration changes (a backend added, weights and
//! limits changed) without a single failed request, dropped connection or lost session; an
//! invalid file is refused with every problem listed while the running configuration stays;
//! settings that need a restart are refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn config(backends: &[&MockServer], weights: &[u32], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(m, w)| format!("{{ url = \"{}\", weight = {w} }}", m.url()))
        .collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

fn admin(p: &Proxy, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let r = c.request(method, path, &[], b"").unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

fn backend_names(p: &Proxy) -> Vec<String> {
    let (_, v) = admin(p, "GET", "/backends");
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[allow(unsafe_code)]
fn sighup(p: &Proxy) {
    // SAFETY: sending SIGHUP to the child process this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGHUP);
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a test: one scenario (load, reloads under it, then the checks) read top to bottom"
)]
fn reload_under_load_loses_nothing() {
    let a = mock("alpha");
    let b = mock("beta");
    let g = mock("gamma");
    let slow = mock_with(MockConfig {
        name: "delta".into(),
        progress_events: 20,
        progress_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let p = start_proxy(&config(&[&a, &b, &slow], &[1, 1, 1], ""), "auto");
    let addr = p.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    // Four clients, each on one keep-alive connection with one session, calling in a loop.
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        clients.push(std::thread::spawn(move || {
            let mut c = HttpClient::connect(addr).unwrap();
            let (sid, server) = init_session(&mut c);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let call = rpc(
                    n,
                    "tools/call",
                    json!({"name": "echo", "arguments": {"text": format!("c{i}-{n}")}}),
                );
                match c.mcp("/mcp", Some(&sid), &call) {
                    Ok(r) if r.status == 200 => {
                        let v = r.json().unwrap();
                        if v.get("error").is_some() || v["id"] != json!(n) {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("client {i} call {n}: {v}"));
                        } else {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => failures.lock().unwrap().push(format!(
                        "client {i} call {n} ({server}): HTTP {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("client {i} call {n}: {e:#}"));
                        return;
                    }
                }
            }
        }));
    }
    // A client that starts a new session for every call (a backend choice each time).
    {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        clients.push(std::thread::spawn(move || {
            let mut c = HttpClient::connect(addr).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (sid, server) = init_session(&mut c);
                if whoami(&mut c, &sid) == server {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().unwrap().push(format!("session {n} moved"));
                }
            }
        }));
    }
    // An SSE tool call that streams for ~2 s across the reloads, on a session pinned to the
    // backend that streams progress.
    let stream = std::thread::spawn(move || {
        let mut c = HttpClient::connect(addr).unwrap();
        loop {
            let (sid, server) = init_session(&mut c);
            if server != "delta" {
                continue;
            }
            let r = c
                .mcp(
                    "/mcp",
                    Some(&sid),
                    &rpc(
                        99,
                        "tools/call",
                        json!({"name": "progress", "arguments": {}, "_meta": {"progressToken": "p"}}),
                    ),
                )
                .unwrap();
            return r;
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    // 1. SIGHUP with a backend added and a limit rule that matches nothing.
    let cfg2 = config(
        &[&a, &b, &slow, &g],
        &[1, 1, 1, 1],
        "\n[[limits]]\nserver = \"t\"\ntool = \"never-called\"\nkey = \"global\"\nrate = 1\n",
    );
    std::fs::write(&p.config_path, &cfg2).unwrap();
    sighup(&p);
    let gamma = g.url().trim_start_matches("http://").to_string();
    wait_for("gamma listed after SIGHUP", || {
        backend_names(&p)
            .iter()
            .any(|n| gamma.starts_with(n.as_str()))
    });
    // New sessions reach the new backend.
    wait_for("a session on gamma", || {
        let mut c = HttpClient::connect(addr).unwrap();
        init_session(&mut c).1 == "gamma"
    });

    // 2. POST /reload with weights changed: the answer lists the changes.
    let cfg3 = config(&[&a, &b, &slow, &g], &[2, 1, 1, 1], "");
    std::fs::write(&p.config_path, &cfg3).unwrap();
    let (status, v) = admin(&p, "POST", "/reload");
    assert_eq!(status, 200, "{v}");
    let changes: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        changes.iter().any(|c| c.contains("weight 1 -> 2")),
        "{changes:?}"
    );
    assert!(
        changes.iter().any(|c| c.starts_with("limits:")),
        "{changes:?}"
    );

    // 3. An invalid file: refused with every problem, the running configuration stays.
    std::fs::write(
        &p.config_path,
        cfg3.replace("path = \"/mcp\"", "path = \"mcp\"\nbalance = \"fastest\""),
    )
    .unwrap();
    let (status, v) = admin(&p, "POST", "/reload");
    assert_eq!(status, 400, "{v}");
    let errors = v["errors"].as_array().unwrap();
    assert!(errors.len() >= 2, "every problem listed: {v}");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("balance")),
        "{v}"
    );
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains("path")),
        "{v}"
    );
    // A setting that needs a restart is refused by name.
    std::fs::write(&p.config_path, cfg3.replace("workers = 2", "workers = 3")).unwrap();
    let (status, v) = admin(&p, "POST", "/reload");
    assert_eq!(status, 400, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("proxy.workers:"),
        "{v}"
    );
    sighup(&p); // a refused SIGHUP leaves everything running as well
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(backend_names(&p).len(), 4);

    // Let the load run on the last configuration a little, then stop.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    let progress = progress_events(&r);
    assert_eq!(progress, 20, "every progress event of the stream arrived");
    assert_eq!(r.json().unwrap()["id"], json!(99));
    let failures = failures.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "reload under load: {ok} requests answered, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 100, "too little load to mean anything: {ok}");
}

/// A session on each of `n` backends (a new connection per session, opened until each backend
/// has one), by backend name.
fn session_on_each(p: &Proxy, n: usize) -> std::collections::HashMap<String, (HttpClient, String)> {
    let mut on = std::collections::HashMap::new();
    for _ in 0..40 {
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, server) = init_session(&mut c);
        on.entry(server).or_insert((c, sid));
        if on.len() == n {
            break;
        }
    }
    assert_eq!(on.len(), n, "sessions on every backend");
    on
}

/// `tools/call whoami` (id 3) in session `sid`, whatever the answer.
fn call_whoami(c: &mut HttpClient, sid: &str) -> mcplb::demo::Response {
    let call = rpc(3, "tools/call", json!({"name": "whoami", "arguments": {}}));
    c.mcp("/mcp", Some(sid), &call).unwrap()
}

#[test]
fn reload_removes_a_backend_and_keeps_the_others_sessions() {
    let a = mock("alpha");
    let b = mock("beta");
    let p = start_proxy(&config(&[&a, &b], &[1, 1], ""), "legacy");
    let mut on = session_on_each(&p, 2);
    std::fs::write(&p.config_path, config(&[&a], &[1], "")).unwrap();
    let (status, v) = admin(&p, "POST", "/reload");
    assert_eq!(status, 200, "{v}");
    assert!(v["changes"][0].as_str().unwrap().contains("removed"), "{v}");
    // The kept backend's session goes on, on the same connection.
    let (c, sid) = on.get_mut("alpha").unwrap();
    assert_eq!(whoami(c, sid), "alpha");
    // The removed backend's session is gone: 404, as for any unknown session.
    let (c, sid) = on.get_mut("beta").unwrap();
    let r = call_whoami(c, sid);
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["id"], json!(3));
    // New sessions only go to what is listed now.
    for _ in 0..10 {
        let mut c = HttpClient::connect(p.addr).unwrap();
        assert_eq!(init_session(&mut c).1, "alpha");
    }
    assert_eq!(backend_names(&p).len(), 1);
}

/// Parked connections whose tasks wait warm for the next woken one (`runtime/park.rs`) are
/// served after a reload with the new configuration, round after round.
#[test]
fn woken_connections_after_a_reload_use_the_new_configuration() {
    let a = mock("alpha");
    let b = mock("beta");
    let p = start_proxy(&config(&[&a, &b], &[1, 1], ""), "auto");
    let mut on = session_on_each(&p, 2);
    // Woken and parked again a few times (past the longest hot wait, 250 ms).
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        for (server, (c, sid)) in on.iter_mut() {
            assert_eq!(whoami(c, sid), *server);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&p.config_path, config(&[&a], &[1], "")).unwrap();
    let (status, v) = admin(&p, "POST", "/reload");
    assert_eq!(status, 200, "{v}");
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let (c, sid) = on.get_mut("alpha").unwrap();
        assert_eq!(whoami(c, sid), "alpha", "round {round}");
        let (c, sid) = on.get_mut("beta").unwrap();
        assert_eq!(call_whoami(c, sid).status, 404, "round {round}");
    }
}

/// `proxy.session_keys_file` with `proxy.watch_interval`: the keys live in a file of their own
/// (a Kubernetes Secret volume, a systemd credential), swapped the way the kubelet swaps a
/// Secret (a new file renamed over the old); mcplb sees the change by itself and reloads. The
/// rotation: NEW added after OLD (every replica can open both), NEW moved first (new ids sealed
/// with it; OLD ones still open), OLD dropped (its sessions 404, the client re-initializes). A
/// broken file is refused with the key named and the running keys stay.
#[test]
fn session_keys_from_a_watched_file_rotate_without_a_reload_call() {
    const OLD: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const NEW: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
    let m = mock("alpha");
    let dir = std::env::temp_dir().join(format!("mcplb-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("session-keys");
    let swap = |text: &str| {
        let tmp = dir.join("..data_tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &keys).unwrap();
    };
    swap(&format!("# the first key seals new ids\n{OLD}\n"));
    let extra = format!(
        "session_keys_file = \"{}\"\nwatch_interval = \"200ms\"\n",
        keys.display()
    );
    let cfg = config(&[&m], &[1], "").replace("workers = 2\n", &format!("workers = 2\n{extra}"));
    let p = start_proxy(&cfg, "auto");
    let key_count = || {
        admin(&p, "GET", "/config").1["proxy"]["session_keys"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(key_count(), 1);
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (old_sid, _) = init_session(&mut c);
    assert_eq!(whoami(&mut c, &old_sid), "alpha");

    swap(&format!("{OLD}\n{NEW}\n"));
    wait_for("the second key to be loaded", || key_count() == 2);
    assert_eq!(whoami(&mut c, &old_sid), "alpha");
    let generation = || {
        admin(&p, "GET", "/stats").1["config_generation"]
            .as_u64()
            .unwrap()
    };
    let before = generation();
    swap(&format!("{NEW}\n{OLD}\n"));
    wait_for("the keys' new order to be loaded", || generation() > before);
    let (new_sid, _) = init_session(&mut c);
    assert_ne!(new_sid, old_sid);
    assert_eq!(whoami(&mut c, &old_sid), "alpha");
    assert_eq!(whoami(&mut c, &new_sid), "alpha");

    swap(&format!("{NEW}\n"));
    wait_for("the old key to be dropped", || key_count() == 1);
    assert_eq!(whoami(&mut c, &new_sid), "alpha");
    let gone = c
        .mcp(
            "/mcp",
            Some(&old_sid),
            &rpc(9, "tools/call", json!({"name": "whoami", "arguments": {}})),
        )
        .unwrap();
    assert_eq!(
        gone.status,
        404,
        "{:?}",
        String::from_utf8_lossy(&gone.body)
    );

    // A broken file: refused (the reload names the key), the running key stays.
    let before = generation();
    swap("not-a-key\n");
    let (status, v) = admin(&p, "POST", "/reload");
    assert_eq!(generation(), before);
    assert_eq!(key_count(), 1);
    assert_eq!(whoami(&mut c, &new_sid), "alpha");
    assert_eq!(status, 400);
    assert!(
        v.to_string().contains("proxy.session_keys_file: key 1"),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `proxy.watch_interval` turned on by a reload: the watcher, which sleeps with no timer while
/// the watch is off, wakes and from then on sees changes to the file by itself.
#[test]
fn a_reload_that_turns_the_watch_on_starts_watching() {
    let a = mock("alpha");
    let b = mock("beta");
    let watched = |m: &MockServer| {
        config(&[m], &[1], "").replace("workers = 2\n", "workers = 2\nwatch_interval = \"200ms\"\n")
    };
    let p = start_proxy(&config(&[&a], &[1], ""), "auto");
    let first = backend_names(&p);
    std::fs::write(&p.config_path, watched(&a)).unwrap();
    let (status, _) = admin(&p, "POST", "/reload");
    assert_eq!(status, 200);
    // No reload call from here: the watcher sees the file change (renamed over it whole: the
    // watcher may look at any moment, and a half-written file is refused until it changes).
    let tmp = p.config_path.with_extension("tmp");
    std::fs::write(&tmp, watched(&b)).unwrap();
    std::fs::rename(&tmp, &p.config_path).unwrap();
    wait_for("the watcher to load the new backend", || {
        let now = backend_names(&p);
        now.len() == 1 && now != first
    });
}

#[test]
fn session_key_settings_are_checked_by_name() {
    let m = mock("alpha");
    let base = config(&[&m], &[1], "");
    let with = |extra: &str| {
        let text = base.replace("workers = 2\n", &format!("workers = 2\n{extra}\n"));
        match mcplb::Config::parse(&text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let err = with(&format!(
        "session_key = \"{}\"\nsession_keys_file = \"/nonexistent\"",
        "a".repeat(64)
    ));
    assert!(err.contains("proxy.session_keys: set one of"), "{err}");
    let err = with("session_keys_file = \"/nonexistent/mcplb-keys\"");
    assert!(
        err.contains("proxy.session_keys_file: /nonexistent/mcplb-keys: cannot read it"),
        "{err}"
    );
    let err = with("watch_interval = \"10ms\"");
    assert!(
        err.contains("proxy.watch_interval: at least 100ms"),
        "{err}"
    );
    assert_eq!(with("watch_interval = \"0s\""), "");
}
