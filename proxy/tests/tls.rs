//! TLS through a real `mcplb` process, with certificates made in the test (rcgen): https
//! clients (initialize + tools/call), certificate reload while a connection stays open, bad
//! input on the TLS port, client certificates, and `https://` backends behind a small rustls
//! terminator in front of the mock (verified against the test CA, a wrong CA, mTLS, pooling).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and the files of certificates it issued, in a temp dir removed on drop.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl Pki {
    fn new(label: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "mcplb-tls-{}-{label}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("mcplb test CA {label}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// Issues a leaf for `names` and writes `NAME.pem` / `NAME.key`; returns the leaf's DER.
    fn issue(&self, file: &str, names: &[&str]) -> Vec<u8> {
        let (cert, key) = self.issue_pem(names);
        std::fs::write(self.dir.join(format!("{file}.pem")), &cert).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), &key).unwrap();
        CertificateDer::from_pem_slice(cert.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn issue_pem(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        // The chain: leaf, then the CA (a chain in the file is allowed).
        (
            format!("{}{}", cert.pem(), self.ca.pem()),
            key.serialize_pem(),
        )
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A client config trusting this CA, with an optional client certificate (`file` as
    /// written by [`Pki::issue`]).
    fn client_config(&self, client_cert: Option<&str>) -> Arc<rustls::ClientConfig> {
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots());
        let mut cfg = match client_cert {
            None => b.with_no_client_auth(),
            Some(f) => b
                .with_client_auth_cert(
                    certs(&self.dir.join(format!("{f}.pem"))),
                    PrivateKeyDer::from_pem_file(self.dir.join(format!("{f}.key"))).unwrap(),
                )
                .unwrap(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A server config for `file`, requiring client certificates from this CA when `mtls`.
    fn server_config(&self, file: &str, mtls: bool) -> Arc<rustls::ServerConfig> {
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = if mtls {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(self.roots()),
                provider(),
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        } else {
            b.with_no_client_auth()
        };
        Arc::new(
            b.with_single_cert(
                certs(&self.dir.join(format!("{file}.pem"))),
                PrivateKeyDer::from_pem_file(self.dir.join(format!("{file}.key"))).unwrap(),
            )
            .unwrap(),
        )
    }
}

fn certs(p: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(p)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn tls_client(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> anyhow::Result<HttpClient> {
    Ok(HttpClient::connect_tls(
        addr,
        Duration::from_secs(10),
        cfg.clone(),
        ServerName::try_from("localhost").unwrap(),
    )?)
}

fn tls_proxy_config(pki: &Pki, m: &MockServer, extra_tls: &str) -> String {
    format!(
        "{}\n[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra_tls}\n",
        config_for(&[m], ""),
        pki.path("server.pem"),
        pki.path("server.key")
    )
}

fn echo(c: &mut HttpClient, sid: Option<&str>, id: u64) -> serde_json::Value {
    let r = c
        .mcp(
            "/mcp",
            sid,
            &rpc(
                id,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": format!("hi {id}")}}),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json().unwrap();
    assert_eq!(v["id"], id);
    v
}

#[test]
fn https_client_initializes_and_calls_tools() {
    for driver in DRIVERS {
        let pki = Pki::new("basic");
        pki.issue("server", &["localhost", "127.0.0.1"]);
        let m = mock("a");
        let p = start_proxy(&tls_proxy_config(&pki, &m, ""), driver);
        let cfg = pki.client_config(None);
        let mut c = tls_client(p.addr, &cfg).unwrap();
        let (sid, name) = init_session(&mut c);
        assert_eq!(name, "a");
        // Keep-alive: many calls on one TLS connection, each answered with its id.
        for id in 10..40 {
            let v = echo(&mut c, Some(&sid), id);
            assert!(v["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("hi {id}")));
        }
        // A large answer crosses many TLS records.
        let big = "x".repeat(300_000);
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &rpc(
                    99,
                    "tools/call",
                    json!({"name": "echo", "arguments": {"text": big}}),
                ),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.len() > 300_000, "{} bytes", r.body.len());
        assert_eq!(whoami(&mut c, &sid), "a");
        // ALPN: mcplb speaks http/1.1 and says so.
        let mut raw =
            rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut sock = TcpStream::connect(p.addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while raw.is_handshaking() {
            raw.complete_io(&mut sock).unwrap();
        }
        assert_eq!(raw.alpn_protocol(), Some(&b"http/1.1"[..]));
        // A client that trusts another CA refuses mcplb's certificate.
        let other = Pki::new("other");
        assert!(tls_client(p.addr, &other.client_config(None)).is_err());
    }
}

/// Reads until EOF or error, with a deadline; true when the peer closed the connection.
fn closed_by_peer(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn bad_input_on_the_tls_port_is_closed_and_others_carry_on() {
    let pki = Pki::new("bad");
    pki.issue("server", &["localhost"]);
    let m = mock("a");
    let config = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        tls_proxy_config(&pki, &m, "")
    );
    let p = start_proxy(&config, "auto");
    let cfg = pki.client_config(None);
    let mut good = tls_client(p.addr, &cfg).unwrap();
    let (sid, _) = init_session(&mut good);
    echo(&mut good, Some(&sid), 2);

    // Plain HTTP on the TLS port.
    let mut plain = TcpStream::connect(p.addr).unwrap();
    plain
        .write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .unwrap();
    // Garbage that looks like nothing.
    let mut junk = TcpStream::connect(p.addr).unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
        .unwrap();
    junk.write_all(&[0xAB; 2000]).unwrap();
    // A handshake cut in the middle (half a ClientHello, then silence) is held only until
    // header_timeout; not waited for here.
    let mut half = TcpStream::connect(p.addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01])
        .unwrap();

    // The good client is served while the bad ones are open.
    echo(&mut good, Some(&sid), 3);
    assert!(
        closed_by_peer(plain),
        "plain HTTP on the TLS port not closed"
    );
    assert!(closed_by_peer(junk), "garbage on the TLS port not closed");
    for id in 4..10 {
        echo(&mut good, Some(&sid), id);
    }
    let mut again = tls_client(p.addr, &cfg).unwrap();
    echo(&mut again, Some(&sid), 11);

    // Counted (cores report once a second).
    let admin = p.admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = HttpClient::connect(admin)
            .unwrap()
            .request("GET", "/stats", &[], b"")
            .unwrap()
            .json()
            .unwrap();
        if s["counters"]["tls_handshake_errors"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handshake errors not counted: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(half);
}

#[test]
fn an_oversized_handshake_is_refused_and_the_core_keeps_serving() {
    // One worker: if the bad connection made it spin, nobody else would be served.
    let pki = Pki::new("huge");
    pki.issue("server", &["localhost"]);
    let m = mock("a");
    let config = tls_proxy_config(&pki, &m, "").replace("workers = 2", "workers = 1");
    let p = start_proxy(&config, "auto");
    // A ClientHello that claims 65 535 bytes, sent as five full 16 KiB records: more than
    // rustls buffers for a handshake message.
    let mut huge = TcpStream::connect(p.addr).unwrap();
    let mut first = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xff];
    first.resize(5 + 0x4000, 0x41);
    huge.write_all(&first).unwrap();
    for _ in 0..4 {
        let mut rec = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        rec.resize(5 + 0x4000, 0x42);
        if huge.write_all(&rec).is_err() {
            break;
        }
    }
    let cfg = pki.client_config(None);
    let mut good = tls_client(p.addr, &cfg).unwrap();
    let (sid, _) = init_session(&mut good);
    echo(&mut good, Some(&sid), 2);
    assert!(closed_by_peer(huge), "oversized handshake not closed");
    echo(&mut good, Some(&sid), 3);
}

#[test]
fn certificate_reload_serves_new_connections_and_keeps_open_ones() {
    let pki = Pki::new("reload");
    let first = pki.issue("server", &["localhost"]);
    let m = mock("a");
    let p = start_proxy(
        &tls_proxy_config(&pki, &m, "reload_interval = \"100ms\""),
        "auto",
    );
    let cfg = pki.client_config(None);
    let mut old = tls_client(p.addr, &cfg).unwrap();
    assert_eq!(old.peer_certificate().unwrap(), first);
    let (sid, _) = init_session(&mut old);

    // Replace the files (key first, then the certificate, as a deploy tool might).
    let (cert, key) = pki.issue_pem(&["localhost"]);
    let second = CertificateDer::from_pem_slice(cert.as_bytes())
        .unwrap()
        .to_vec();
    assert_ne!(first, second);
    std::fs::write(pki.dir.join("server.key"), key).unwrap();
    std::fs::write(pki.dir.join("server.pem"), &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = tls_client(p.addr, &cfg).unwrap();
        if c.peer_certificate().unwrap() == second {
            echo(&mut c, Some(&sid), 5);
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection opened before the reload still works, on its old certificate.
    echo(&mut old, Some(&sid), 6);
    assert_eq!(old.peer_certificate().unwrap(), first);

    // A broken certificate file is refused; the last good certificate stays.
    std::fs::write(pki.dir.join("server.pem"), "not a certificate").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let mut c = tls_client(p.addr, &cfg).unwrap();
    assert_eq!(c.peer_certificate().unwrap(), second);
    echo(&mut c, Some(&sid), 7);
    echo(&mut old, Some(&sid), 8);
}

#[test]
fn client_certificates_required_when_client_ca_is_set() {
    let pki = Pki::new("mtls-in");
    pki.issue("server", &["localhost"]);
    pki.issue("alice", &["alice"]);
    let strangers = Pki::new("strangers");
    strangers.issue("mallory", &["mallory"]);
    let m = mock("a");
    let p = start_proxy(
        &tls_proxy_config(&pki, &m, &format!("client_ca = \"{}\"", pki.path("ca.pem"))),
        "auto",
    );
    let mut alice = tls_client(p.addr, &pki.client_config(Some("alice"))).unwrap();
    let (sid, _) = init_session(&mut alice);
    echo(&mut alice, Some(&sid), 3);
    // Without a certificate, or with one from another CA: no request gets through. (In TLS
    // 1.3 the client learns of the refusal at its first read.)
    for cfg in [pki.client_config(None), {
        // mallory's certificate, signed by another CA, offered to a client trusting ours.
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots());
        Arc::new(
            b.with_client_auth_cert(
                certs(&strangers.dir.join("mallory.pem")),
                PrivateKeyDer::from_pem_file(strangers.dir.join("mallory.key")).unwrap(),
            )
            .unwrap(),
        )
    }] {
        let refused = match tls_client(p.addr, &cfg) {
            Err(_) => true,
            Ok(mut c) => c
                .mcp("/mcp", Some(&sid), &rpc(4, "ping", json!({})))
                .is_err(),
        };
        assert!(refused, "a client without a valid certificate got through");
    }
    echo(&mut alice, Some(&sid), 5);
}

/// A small TLS terminator in front of a plain backend (what an https MCP server looks like):
/// one thread per connection, polling both sides.
struct TlsFront {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The server name (SNI) the last client sent.
    sni: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn tls_front(bind: SocketAddr, backend: SocketAddr, cfg: Arc<rustls::ServerConfig>) -> TlsFront {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sni = Arc::new(std::sync::Mutex::new(None));
    let (acc, st, sn) = (accepted.clone(), stop.clone(), sni.clone());
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            if st.load(Ordering::Relaxed) {
                break;
            }
            let Ok(sock) = sock else { continue };
            acc.fetch_add(1, Ordering::Relaxed);
            let (cfg, st, sn) = (cfg.clone(), st.clone(), sn.clone());
            std::thread::spawn(move || {
                let _ = pump(sock, backend, cfg, &st, &sn);
            });
        }
    });
    TlsFront {
        addr,
        accepted,
        sni,
        stop,
    }
}

fn pump(
    sock: TcpStream,
    backend: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    stop: &AtomicBool,
    sni: &std::sync::Mutex<Option<String>>,
) -> anyhow::Result<()> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg)?, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    *sni.lock().unwrap() = tls.conn.server_name().map(str::to_string);
    let mut up = TcpStream::connect(backend)?;
    let tick = Some(Duration::from_millis(2));
    tls.sock.set_read_timeout(tick)?;
    up.set_read_timeout(tick)?;
    let idle = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut b = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match tls.read(&mut b) {
            Ok(0) => break,
            Ok(n) => up.write_all(&b[..n])?,
            Err(e) if idle(&e) => {}
            Err(e) => return Err(e.into()),
        }
        match up.read(&mut b) {
            Ok(0) => break,
            Ok(n) => {
                tls.write_all(&b[..n])?;
                tls.flush()?;
            }
            Err(e) if idle(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// mcplb in front of the https backend at `url`, trusting `pki`'s CA.
fn proxy_trusting(url: &str, pki: &Pki, health: &str, driver: &str) -> Proxy {
    start_proxy(
        &https_backend_config(url, &format!("ca = \"{}\"", pki.path("ca.pem")), health),
        driver,
    )
}

fn https_backend_config(url: &str, backend_extra: &str, health: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{{ url = \"{url}\", {backend_extra} }}]\n{health}\n"
    )
}

const NO_HEALTH: &str = "[servers.health]\nenabled = false\n";
const FAST_HEALTH: &str = "[servers.health]\ninterval = \"200ms\"\ntimeout = \"2s\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n";

fn backend_state(admin: SocketAddr) -> String {
    HttpClient::connect(admin)
        .unwrap()
        .request("GET", "/backends", &[], b"")
        .unwrap()
        .json()
        .unwrap()["backends"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn wait_state(admin: SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = backend_state(admin);
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend state {s}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn https_backend_verified_with_sni_and_pooled() {
    for driver in DRIVERS {
        let pki = Pki::new("up");
        pki.issue("backend", &["localhost"]);
        let m = mock("secure");
        // The host name in the URL is what the certificate must carry (SNI too).
        let bind = ("localhost", 0)
            .to_socket_addrs_first()
            .expect("localhost resolves");
        let front = tls_front(bind, m.addr(), pki.server_config("backend", false));
        let url = format!("https://localhost:{}/mcp", front.addr.port());
        let p = proxy_trusting(&url, &pki, NO_HEALTH, driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, name) = init_session(&mut c);
        assert_eq!(name, "secure");
        assert_eq!(front.sni.lock().unwrap().as_deref(), Some("localhost"));
        for id in 10..60 {
            echo(&mut c, Some(&sid), id);
        }
        // Fifty requests on one client connection reuse pooled TLS connections: a handshake
        // per request would be a defect.
        let conns = front.accepted.load(Ordering::Relaxed);
        assert!(
            (1..=3).contains(&conns),
            "{conns} TLS connections for 52 requests"
        );
        // Health checks speak https too.
        drop(p);
        let p = proxy_trusting(&url, &pki, FAST_HEALTH, driver);
        wait_state(p.admin.unwrap(), "healthy");
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut c);
        echo(&mut c, Some(&sid), 3);
    }
}

trait FirstAddr {
    fn to_socket_addrs_first(self) -> Option<SocketAddr>;
}

impl FirstAddr for (&str, u16) {
    fn to_socket_addrs_first(self) -> Option<SocketAddr> {
        std::net::ToSocketAddrs::to_socket_addrs(&self)
            .ok()
            .and_then(|mut a| a.next())
    }
}

/// A mock named "secure" behind a TLS terminator on 127.0.0.1 with a certificate from `pki`
/// (requiring client certificates from it when `mtls`), and its https URL.
fn secure_backend(pki: &Pki, mtls: bool) -> (MockServer, TlsFront, String) {
    pki.issue("backend", &["127.0.0.1"]);
    let m = mock("secure");
    let front = tls_front(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        m.addr(),
        pki.server_config("backend", mtls),
    );
    let url = format!("https://127.0.0.1:{}/mcp", front.addr.port());
    (m, front, url)
}

#[test]
fn https_backend_with_the_wrong_ca_is_a_502_and_unhealthy() {
    let pki = Pki::new("up-right");
    let wrong = Pki::new("up-wrong");
    let (_m, _front, url) = secure_backend(&pki, false);
    let p = proxy_trusting(&url, &wrong, FAST_HEALTH, "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let r = initialize(&mut c, 42);
    assert!(
        r.status == 502 || r.status == 503,
        "status {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json().unwrap();
    assert_eq!(v["id"], 42, "{v}");
    assert!(v["error"]["code"].is_i64(), "{v}");
    wait_state(p.admin.unwrap(), "unhealthy");

    // The same backend with the right CA is fine.
    drop(p);
    let p = proxy_trusting(&url, &pki, FAST_HEALTH, "auto");
    wait_state(p.admin.unwrap(), "healthy");
    let mut c = HttpClient::connect(p.addr).unwrap();
    init_session(&mut c);
}

#[test]
fn https_backend_requiring_a_client_certificate() {
    let pki = Pki::new("up-mtls");
    pki.issue("mcplb", &["mcplb"]);
    let (_m, _front, url) = secure_backend(&pki, true);
    let with_cert = format!(
        "ca = \"{}\", client_cert = \"{}\", client_key = \"{}\"",
        pki.path("ca.pem"),
        pki.path("mcplb.pem"),
        pki.path("mcplb.key")
    );
    let p = start_proxy(&https_backend_config(&url, &with_cert, NO_HEALTH), "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, name) = init_session(&mut c);
    assert_eq!(name, "secure");
    echo(&mut c, Some(&sid), 9);
    drop(p);

    // Without the client certificate the backend refuses mcplb: a JSON-RPC error, not a hang.
    let p = proxy_trusting(&url, &pki, NO_HEALTH, "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let r = initialize(&mut c, 7);
    assert!(r.status >= 500, "status {}", r.status);
    assert_eq!(r.json().unwrap()["id"], 7);
}

#[test]
fn tls_config_errors_name_the_key() {
    let pki = Pki::new("cfg");
    pki.issue("server", &["localhost"]);
    let other = Pki::new("cfg-other");
    other.issue("server", &["localhost"]);
    let m = mock("a");
    // A key that does not belong to the certificate.
    let bad = format!(
        "{}\n[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        config_for(&[&m], ""),
        pki.path("server.pem"),
        other.path("server.key")
    );
    let e = mcplb::Config::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("proxy.tls"), "{e}");
    let missing = format!(
        "{}\n[proxy.tls]\ncert = \"{}\"\n",
        config_for(&[&m], ""),
        pki.path("server.pem")
    );
    let e = mcplb::Config::parse(&missing).unwrap_err().to_string();
    assert!(e.contains("proxy.tls") && e.contains("key"), "{e}");
    let nofile = format!(
        "{}\n[proxy.tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
        config_for(&[&m], "")
    );
    let e = mcplb::Config::parse(&nofile).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/c.pem"), "{e}");
    let ca_on_http = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"t\"\nbackends = [{{ url = \"{}\", ca = \"{}\" }}]\n",
        m.url(),
        pki.path("ca.pem")
    );
    let e = mcplb::Config::parse(&ca_on_http).unwrap_err().to_string();
    assert!(e.contains("servers[0].backends[0].ca"), "{e}");
    let bad_ca = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"t\"\nbackends = [{{ url = \"https://127.0.0.1:1/mcp\", ca = \"{}\" }}]\n",
        pki.path("server.key")
    );
    let e = mcplb::Config::parse(&bad_ca).unwrap_err().to_string();
    assert!(e.contains("servers[0].backends[0]"), "{e}");
}

#[test]
fn config_reload_swaps_certificates_and_refuses_bad_ones() {
    // No file watching: the certificates change through a config reload (POST /reload), here
    // to files at new paths.
    let pki = Pki::new("cfgreload");
    let first = pki.issue("server", &["localhost"]);
    let m = mock("a");
    let with_admin = |cfg: String| format!("{cfg}\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let p = start_proxy(
        &with_admin(tls_proxy_config(&pki, &m, "reload_interval = \"0s\"")),
        "auto",
    );
    let cfg = pki.client_config(None);
    let mut old = tls_client(p.addr, &cfg).unwrap();
    assert_eq!(old.peer_certificate().unwrap(), first);
    let (sid, _) = init_session(&mut old);
    let reload = || {
        let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
        let r = c.request("POST", "/reload", &[], b"").unwrap();
        (r.status, String::from_utf8_lossy(&r.body).to_string())
    };

    // New files at new paths, named by the new config.
    let (cert, key) = pki.issue_pem(&["localhost"]);
    let second = CertificateDer::from_pem_slice(cert.as_bytes())
        .unwrap()
        .to_vec();
    std::fs::write(pki.dir.join("next.pem"), &cert).unwrap();
    std::fs::write(pki.dir.join("next.key"), key).unwrap();
    let next = with_admin(tls_proxy_config(&pki, &m, "reload_interval = \"0s\""))
        .replace("server.pem", "next.pem")
        .replace("server.key", "next.key");
    std::fs::write(&p.config_path, &next).unwrap();
    let (status, body) = reload();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("certificates reloaded"), "{body}");
    let mut c = tls_client(p.addr, &cfg).unwrap();
    assert_eq!(
        c.peer_certificate().unwrap(),
        second,
        "new connections get the new one"
    );
    echo(&mut c, Some(&sid), 5);
    echo(&mut old, Some(&sid), 6);

    // A config naming a broken certificate is refused whole; the running one stays.
    std::fs::write(pki.dir.join("broken.pem"), "not a certificate").unwrap();
    std::fs::write(&p.config_path, next.replace("next.pem", "broken.pem")).unwrap();
    let (status, body) = reload();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("proxy.tls"), "{body}");
    let mut c = tls_client(p.addr, &cfg).unwrap();
    assert_eq!(c.peer_certificate().unwrap(), second);
    echo(&mut c, Some(&sid), 7);

    // Turning TLS off needs a restart.
    std::fs::write(&p.config_path, with_admin(config_for(&[&m], ""))).unwrap();
    let (status, body) = reload();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("proxy.tls: cannot change on reload"),
        "{body}"
    );
}
