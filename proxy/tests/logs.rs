//! Logs through a real `mcplb`: a stderr nobody reads does not stall request serving (log and
//! access-log lines go through writer threads), a warning repeated by every request is logged
//! once and then summarized, the last lines are written out at exit, and the access log and
//! the audit trail follow a rotation on SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A loopback port nothing listens on (connections to it are refused).
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A group `/mcp` on `m` and a group `/dead` on a refused port, never ejected, unchecked.
fn with_dead_group(m: &MockServer, extra: &str) -> String {
    format!(
        "{}[servers.health]\nenabled = false\n\n[[servers]]\nname = \"dead\"\npath = \"/dead\"\n\
         backends = [\"http://127.0.0.1:{}/mcp\"]\nmax_ejection_percent = 0\n\
         [servers.health]\nenabled = false\n",
        config_for(&[m], &format!("workers = 1\n{extra}")).replace("workers = 2\n", ""),
        refused_port()
    )
}

fn ping(c: &mut HttpClient, path: &str, id: u64) -> u16 {
    c.request(
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        rpc(id, "ping", json!({})).to_string().as_bytes(),
    )
    .unwrap()
    .status
}

/// Bytes waiting in a pipe (its read end).
#[allow(unsafe_code)]
fn queued(fd: &impl AsRawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on a pipe fd this test owns, into a local int.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    n
}

#[test]
fn a_stderr_nobody_reads_does_not_stall_requests() {
    let m = mock_with(MockConfig {
        name: "alpha".into(),
        stateless: true,
        ..Default::default()
    });
    let cfg = with_dead_group(&m, "access_log = \"stderr\"");
    for driver in DRIVERS {
        // stderr is a pipe this test holds and never reads; every request writes an access-log
        // line and, to the dead group, a debug line.
        let config_path = write_config(&cfg);
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcplb"))
            .args(["run", "--config"])
            .arg(&config_path)
            .args(["--driver", driver])
            .env("MCPLB_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        // Killed when dropped: also when an assertion below fails.
        let p = proxy_from(child, config_path, false);
        let addr = p.addr;
        // A worker blocked on stderr would leave this client waiting: bounded, then failed.
        let mut c = HttpClient::connect_timeout(addr, Duration::from_secs(20)).unwrap();
        // Requests until the pipe is (nearly) full. A pipe holds 16 pages of 4 KiB, and a
        // write that does not fit in the last page's room takes a new page, so a full pipe
        // holds 64 KiB less up to a line a page: 59 653 bytes were seen. 40 000 is past any
        // doubt that the writes are about to block. The lines reach the pipe through the
        // writer thread, which a busy machine may run late: how many requests that takes is
        // not fixed, only bounded in time.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0u64;
        while queued(&stderr) < 40_000 {
            assert!(
                Instant::now() < deadline,
                "{driver}: stderr never filled ({} bytes queued after {i} requests): the test \
                 did not block it",
                queued(&stderr)
            );
            assert_eq!(ping(&mut c, "/mcp", i), 200, "{driver}: request {i}");
            assert_eq!(ping(&mut c, "/dead", i), 502, "{driver}: request {i}");
            i += 1;
        }
        // Then 2000 more (many times the lines the pipe still has room for), with it full
        // from their first few on: each still answered.
        for _ in 0..2000 {
            assert_eq!(
                ping(&mut c, "/mcp", i),
                200,
                "{driver}: request {i} (stderr full)"
            );
            assert_eq!(
                ping(&mut c, "/dead", i),
                502,
                "{driver}: request {i} (stderr full)"
            );
            i += 1;
        }
        drop(p);
        drop(stderr);
    }
}

/// Lines for a writer that is stuck (its stderr a pipe nobody reads) are dropped once its
/// queue is full, never waited for, and counted on `/stats`, per log.
#[test]
fn lines_a_stuck_writer_cannot_take_are_dropped_and_counted() {
    let m = mock("alpha");
    let cfg = config_for(&[&m], "access_log = \"stderr\"")
        + "[audit]\nlog = \"stderr\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let config_path = write_config(&cfg);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcplb"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Killed when dropped: also when an assertion below fails.
    let p = proxy_from(child, config_path, true);
    let (addr, admin) = (p.addr, p.admin.unwrap());
    let mut c = HttpClient::connect_timeout(addr, Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0u64;
    let stats = loop {
        for _ in 0..200 {
            // Audited (`initialize`) and access-logged; answered although no line is written.
            assert_eq!(initialize(&mut c, i).status, 200, "request {i}");
            i += 1;
        }
        let s: serde_json::Value = HttpClient::connect(admin)
            .unwrap()
            .request("GET", "/stats", &[], b"")
            .unwrap()
            .json()
            .unwrap();
        let n = |k: &str| s["counters"][k].as_u64().unwrap_or(0);
        if n("access_log_lines_dropped") > 0 && n("audit_lines_dropped") > 0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no line dropped after {i} requests: {s}"
        );
    };
    assert!(queued(&stderr) >= 60_000, "stderr was not full");
    assert!(
        stats["counters"]["audit_lines_dropped"].as_u64().unwrap() <= i,
        "{stats}"
    );
    drop(p);
    drop(stderr);
}

#[test]
fn a_repeated_warning_is_logged_once_then_summarized() {
    let m = mock("alpha");
    let log = std::env::temp_dir().join(format!("mcplb-logs-{}.log", std::process::id()));
    let p = start_proxy_logged(&with_dead_group(&m, ""), "auto", Some(("warn", &log)));
    let mut c = HttpClient::connect(p.addr).unwrap();
    for i in 0..40 {
        assert_eq!(ping(&mut c, "/dead", i), 502);
    }
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the summary of the repeated warnings", || {
        read().contains("more in the last")
    });
    let text = read();
    let full: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("upstream failure") && !l.contains("more in the last"))
        .collect();
    assert_eq!(full.len(), 1, "{text}");
    assert!(full[0].contains("backend unreachable"), "{text}");
    let summary = text
        .lines()
        .find(|l| l.contains("more in the last"))
        .unwrap();
    assert!(
        summary.contains("upstream failure: 39 more in the last 1"),
        "{summary}"
    );
    assert!(summary.contains("backend="), "{summary}");
    let _ = std::fs::remove_file(&log);
}

#[test]
#[allow(unsafe_code)]
fn the_last_lines_are_written_at_exit() {
    let m = mock("alpha");
    let dir = std::env::temp_dir();
    let log = dir.join(format!("mcplb-exit-{}.log", std::process::id()));
    let access = dir.join(format!("mcplb-exit-access-{}.log", std::process::id()));
    let audit = dir.join(format!("mcplb-exit-audit-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&access);
    let _ = std::fs::remove_file(&audit);
    let cfg = config_for(&[&m], &format!("access_log = \"{}\"", access.display()))
        + &format!("[audit]\nlog = \"{}\"\n", audit.display());
    let mut p = start_proxy_logged(&cfg, "auto", Some(("info", &log)));
    // Two connections (on either worker), lines still in the workers' buffers at SIGTERM.
    let mut c = HttpClient::connect(p.addr).unwrap();
    let mut d = HttpClient::connect(p.addr).unwrap();
    for i in 0..5 {
        initialize(&mut c, i);
        initialize(&mut d, 100 + i);
    }
    drop(c);
    drop(d);
    let t = Instant::now();
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    assert!(wait_exit(&mut p, t).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("all connections finished; bye"), "{text}");
    let lines = std::fs::read_to_string(&access).unwrap();
    assert_eq!(lines.lines().count(), 10, "{lines}");
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in [
            "ts",
            "id",
            "client",
            "peer",
            "session",
            "total_us",
            "bytes_out",
        ] {
            assert!(v.get(key).is_some(), "{key} in {line}");
        }
        assert!(v["server"].is_string(), "{line}");
        assert_eq!(v["method"], "initialize", "{line}");
        assert_eq!(v["tool"], "", "{line}");
        assert_eq!(v["caller"], "", "{line}");
        assert_eq!(v["status"], 200, "{line}");
        assert!(
            v["backend"].as_str().is_some_and(|b| !b.is_empty()),
            "{line}"
        );
    }
    let audited = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(audited.lines().count(), 10, "{audited}");
    for line in audited.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["method"], "initialize", "{line}");
    }
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&access);
    let _ = std::fs::remove_file(&audit);
}

#[test]
#[allow(unsafe_code)]
fn the_access_log_and_the_audit_trail_follow_a_rotation_on_sighup() {
    let m = mock("alpha");
    let access = std::env::temp_dir().join(format!("mcplb-rotate-{}.log", std::process::id()));
    let rotated = access.with_extension("log.1");
    let audit = std::env::temp_dir().join(format!("mcplb-rotate-audit-{}.log", std::process::id()));
    let audit_rotated = audit.with_extension("log.1");
    for f in [&access, &rotated, &audit, &audit_rotated] {
        let _ = std::fs::remove_file(f);
    }
    let cfg = config_for(&[&m], &format!("access_log = \"{}\"", access.display()))
        + &format!("[audit]\nlog = \"{}\"\n", audit.display());
    let p = start_proxy(&cfg, "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    initialize(&mut c, 1);
    let count = |f: &std::path::Path| {
        std::fs::read_to_string(f)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    wait_until("the first line", || {
        count(&access) == 1 && count(&audit) == 1
    });
    std::fs::rename(&access, &rotated).unwrap();
    std::fs::rename(&audit, &audit_rotated).unwrap();
    // SAFETY: sending SIGHUP to the child process this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGHUP);
    }
    // Requests after the reload go to a new file at the configured path (those that raced
    // the reload to the old one).
    let mut sent = 1;
    wait_until("a line in the new file", || {
        initialize(&mut c, 2);
        sent += 1;
        count(&access) > 0 && count(&audit) > 0
    });
    wait_until("every line", || {
        count(&access) + count(&rotated) == sent && count(&audit) + count(&audit_rotated) == sent
    });
    assert!(count(&rotated) >= 1);
    assert!(count(&audit_rotated) >= 1);
    for f in [&access, &rotated, &audit, &audit_rotated] {
        let _ = std::fs::remove_file(f);
    }
}
