//! A port another process listens on is refused at start, as by any server, even though every
//! worker's listener has SO_REUSEPORT; `proxy.reuse_port = true` shares it on purpose (a
//! hand-over from a running mcplb to a new one). Real `mcplb` processes over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `mcplb run` with `config` until it exits (at most 20 s); returns its status and stderr.
fn run_to_exit(config: &str) -> (ExitStatus, String) {
    let path = write_config(config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcplb"))
        .args(["run", "--config"])
        .arg(&path)
        .env("MCPLB_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mcplb kept running on a port in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (status, err)
}

fn config(listen: SocketAddr, backend: &MockServer, extra: &str, admin: Option<&str>) -> String {
    let admin = admin.map_or(String::new(), |a| format!("[admin]\nlisten = \"{a}\"\n\n"));
    format!(
        "[proxy]\nlisten = \"{listen}\"\nworkers = 2\n{extra}\n\n{admin}[[servers]]\nname = \"t\"\n\
         path = \"/mcp\"\nbackends = [\"{}\"]\n",
        backend.url()
    )
}

fn answers(addr: SocketAddr) -> String {
    let mut c = HttpClient::connect(addr).unwrap();
    initialize(&mut c, 1).json().unwrap()["result"]["serverInfo"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_second_mcplb_on_the_same_port_is_refused() {
    let m = mock("a");
    let first = start_proxy(
        &config("127.0.0.1:0".parse().unwrap(), &m, "", None),
        "auto",
    );
    let (status, err) = run_to_exit(&config(first.addr, &m, "", None));
    assert!(!status.success(), "{status}: {err}");
    assert!(
        err.contains("proxy.listen: address already in use"),
        "{err}"
    );
    assert!(err.contains(&first.addr.to_string()), "{err}");
    assert!(err.contains("proxy.reuse_port"), "{err}");
    // The first one is untouched and still takes every connection.
    for _ in 0..10 {
        assert_eq!(answers(first.addr), "a");
    }
}

#[test]
fn a_foreign_reuseport_listener_is_refused() {
    // Another program that also set SO_REUSEPORT (same user): the kernel alone would let
    // mcplb join it.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_port(true).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(16).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let m = mock("a");
    let (status, err) = run_to_exit(&config(addr, &m, "", None));
    assert!(!status.success(), "{status}: {err}");
    assert!(
        err.contains("proxy.listen: address already in use"),
        "{err}"
    );
}

#[test]
#[allow(unsafe_code)]
fn reuse_port_hands_over_on_purpose() {
    let (a, b) = (mock("a"), mock("b"));
    let mut old = start_proxy(
        &config("127.0.0.1:0".parse().unwrap(), &a, "", None),
        "auto",
    );
    let port = old.addr;
    let new = start_proxy(&config(port, &b, "reuse_port = true", None), "legacy");
    assert_eq!(new.addr, port);
    // Both serve while both run (the kernel picks per connection). On SIGTERM the old one
    // closes its listeners (and finishes what it has in flight); the new one then takes every
    // connection.
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(old.child.id() as i32, libc::SIGTERM);
    }
    wait_exit(&mut old, Instant::now());
    for _ in 0..10 {
        assert_eq!(answers(port), "b");
    }
}

#[test]
fn reuse_port_never_shares_the_admin_port() {
    let m = mock("a");
    let first = start_proxy(
        &config("127.0.0.1:0".parse().unwrap(), &m, "", Some("127.0.0.1:0")),
        "auto",
    );
    let admin = first.admin.unwrap().to_string();
    let (status, err) = run_to_exit(&config(first.addr, &m, "reuse_port = true", Some(&admin)));
    assert!(!status.success(), "{status}: {err}");
    assert!(err.contains("admin.listen"), "{err}");
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
    assert_eq!(answers(first.addr), "a");
}

#[test]
fn reuse_port_needs_a_fixed_port() {
    let m = mock("a");
    let e = mcplb::Config::parse(&config(
        "127.0.0.1:0".parse().unwrap(),
        &m,
        "reuse_port = true",
        None,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("proxy.reuse_port: needs a fixed port"), "{e}");
}
