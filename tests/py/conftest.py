"""Fixtures for the end-to-end tests: real MCP servers (official Python SDK) behind mcplb.

Environment:
  MCPLB_BIN   path to the mcplb binary (default: <repo>/target/debug/mcplb)
  E2E_DIRECT  if "1", skip the proxy and point clients straight at the first backend
              (for debugging the test code itself; cross-backend tests are skipped).
"""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from mcp_types import CallToolResult, TextContent

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SERVER_SCRIPT = HERE / "mcp_server.py"

DIRECT = os.environ.get("E2E_DIRECT") == "1"
READY_RE = re.compile(r"listening on (\S+:\d+)")
PROXY_READY_TIMEOUT = 15.0
BACKEND_READY_TIMEOUT = 30.0
TAIL_LINES = 60

# Everything started by these fixtures, so failure reports can show their output.
_PROXIES: list["Proxy"] = []
_BACKENDS: list["Backend"] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Waits until something listens on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _stop(proc: subprocess.Popen) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Backend:
    """One `mcp_server.py` subprocess (subclasses name another `script`, taking the same
    `--port` and `--name` arguments)."""

    script: Path = SERVER_SCRIPT

    def __init__(self, name: str, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.log_path = workdir / f"backend-{name}.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.extra_args = extra_args

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        # A free port can be taken between probing and binding; try a few.
        for _attempt in range(3):
            self.port = free_port()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [sys.executable, str(self.script), "--port", str(self.port), "--name", self.name, *self.extra_args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            log.close()
            deadline = time.monotonic() + BACKEND_READY_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _port_open(self.port):
                    return
                time.sleep(0.05)
            _stop(self.proc)
        raise RuntimeError(f"backend {self.name} did not start; log tail:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


class Proxy:
    """One `mcplb run --config FILE` subprocess; stdout/stderr are drained by threads."""

    def __init__(self, binary: str, config_path: Path, args: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.config_path = config_path
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.addr: str | None = None
        self.stdout: collections.deque[str] = collections.deque(maxlen=2000)
        self.stderr: collections.deque[str] = collections.deque(maxlen=2000)
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lines_seen = 0  # stdout + stderr lines so far
        self.lines_reported = -1  # lines_seen when the output was last attached to a failure report

    @property
    def url(self) -> str:
        return f"http://{self.addr}/mcp"

    def _drain(self, stream, sink: collections.deque[str], watch: bool) -> None:
        for line in iter(stream.readline, ""):
            sink.append(line.rstrip("\n"))
            self.lines_seen += 1
            if watch and not self._ready.is_set():
                m = READY_RE.search(line)
                if m:
                    self.addr = m.group(1)
                    self._ready.set()
        stream.close()

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            [self.binary, "run", "--config", str(self.config_path), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            cwd=REPO,
            env=env,
        )
        for stream, sink, watch in ((self.proc.stdout, self.stdout, True), (self.proc.stderr, self.stderr, False)):
            t = threading.Thread(target=self._drain, args=(stream, sink, watch), daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + PROXY_READY_TIMEOUT
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with status {self.proc.returncode}"
                    if self.proc.poll() is not None
                    else f"printed no 'listening on ADDR' line within {PROXY_READY_TIMEOUT:.0f} s"
                )
                self.stop()
                raise RuntimeError(f"mcplb {why} (its output is in the report sections below)")
        # The proxy may print the configured address; "127.0.0.1:0" would be useless.
        if self.addr is not None and self.addr.endswith(":0"):
            self.stop()
            raise RuntimeError("mcplb announced port 0 instead of the bound port")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            for t in self._threads:
                t.join(timeout=2)

    def admin_address(self, timeout: float = 10.0) -> str:
        """The address of the admin port, as mcplb announced it ("admin on http://ADDR/")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.stdout):
                if m := re.search(r"admin on http://([^/]+)/", line):
                    return m.group(1)
            time.sleep(0.05)
        raise AssertionError("mcplb did not announce its admin address")

    def report(self) -> str:
        out = "\n".join(list(self.stdout)[-TAIL_LINES:])
        err = "\n".join(list(self.stderr)[-TAIL_LINES:])
        return f"--- mcplb ({self.config_path.name}) stdout tail ---\n{out}\n--- mcplb stderr tail ---\n{err}"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """A CA, and a leaf for localhost / 127.0.0.1 signed by it (chain in the cert file)."""
    ca_key, ca, key, csr, leaf, chain = (d / n for n in ("ca.key", "ca.pem", "leaf.key", "leaf.csr", "leaf.pem", "chain.pem"))
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=mcplb py test CA")
    _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(leaf), "-days", "2", "-extfile", str(ext))
    chain.write_text(leaf.read_text() + ca.read_text())
    return ca, chain, key


def ed25519_jwks(path: Path, kid: str) -> Ed25519PrivateKey:
    """A new Ed25519 signing key, its public half written to `path` as a one-key JWKS."""
    key = Ed25519PrivateKey.generate()
    x = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
           "x": base64.urlsafe_b64encode(x).rstrip(b"=").decode()}
    path.write_text(json.dumps({"keys": [jwk]}))
    return key


def _mcplb_bin() -> str:
    binary = os.environ.get("MCPLB_BIN") or str(REPO / "target" / "debug" / "mcplb")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"mcplb binary not found at {binary}: build it (cargo build --workspace --bins) or set MCPLB_BIN")
    return binary


_TEST_HOOKS: dict[str, bool] = {}


def has_test_hooks(workdir: Path) -> bool:
    """Whether the mcplb under test honours the `MCPLB_TEST_*` hooks (a debug build's; a release
    build compiles them out): probed once per binary, by starting it and reading
    `build.test_hooks` from its `/stats` (a binary without that field has none)."""
    binary = _mcplb_bin()
    if binary not in _TEST_HOOKS:
        config = workdir / "mcplb-hooks-probe.toml"
        config.write_text(
            '[proxy]\nlisten = "127.0.0.1:0"\nworkers = 1\n\n'
            '[admin]\nlisten = "127.0.0.1:0"\n\n'
            '[[servers]]\nname = "probe"\npath = "/mcp"\nbackends = ["http://127.0.0.1:9/mcp"]\n'
            "[servers.health]\nenabled = false\n"
        )
        proxy = start_proxy_file(config)
        try:
            r = httpx.get(f"http://{proxy.admin_address()}/stats", timeout=10)
        finally:
            proxy.stop()
        r.raise_for_status()
        build = r.json().get("build") or {}
        _TEST_HOOKS[binary] = build.get("test_hooks") is True
    return _TEST_HOOKS[binary]


def require_test_hooks(workdir: Path, hook: str) -> None:
    """Skips the test, saying why, when the mcplb under test lacks the test hook `hook`."""
    if not has_test_hooks(workdir):
        pytest.skip(
            f"needs {hook}, a test hook of debug builds; {_mcplb_bin()} is a build without "
            "them (its /stats says build.test_hooks is not true): run against a debug build"
        )


def server_config(server_name: str, backends: str, extra: str = "") -> str:
    """A config of one server group, `server_name` at /mcp, over `backends` (the items of its
    TOML list, as written), with `extra` (more lines of the group), on 127.0.0.1:0 with two
    workers."""
    return (
        "[proxy]\n"
        'listen = "127.0.0.1:0"\n'
        "workers = 2\n"
        "\n"
        "[[servers]]\n"
        f'name = "{server_name}"\n'
        'path = "/mcp"\n'
        f"{extra}"
        f"backends = [{backends}]\n"
    )


def _config_toml(server_name: str, backends: list[Backend]) -> str:
    return server_config(server_name, ", ".join(f'"{b.url}"' for b in backends))


def text_of(result: CallToolResult) -> str:
    """The text of a tool's result; fails the test when the tool returned an error or no text."""
    assert not result.is_error, f"tool returned an error: {result.content!r}"
    parts = [c.text for c in result.content if isinstance(c, TextContent)]
    assert parts, f"no text content in {result!r}"
    return "".join(parts)


def start_proxy_file(config: Path, args: tuple[str, ...] = ()) -> Proxy:
    """Starts mcplb on a config file (`args`: more `mcplb run` arguments; its output goes into
    failure reports); fails the test if it does not come up."""
    proxy = Proxy(_mcplb_bin(), config, args)
    _PROXIES.append(proxy)
    error = None
    try:
        proxy.start()
    except RuntimeError as e:
        error = str(e)
    if error is not None:
        pytest.fail(error, pytrace=False)
    return proxy


def start_proxy_text(workdir: Path, name: str, toml: str) -> Proxy:
    """Writes `toml` to `workdir/mcplb-NAME.toml` and starts mcplb on it (see start_proxy_file:
    a config mcplb refuses fails the test with mcplb's error)."""
    config = workdir / f"mcplb-{name}.toml"
    config.write_text(toml)
    return start_proxy_file(config)


def _start_proxy(tmp_dir: Path, server_name: str, backends: list[Backend]) -> Proxy:
    return start_proxy_text(tmp_dir, server_name, _config_toml(server_name, backends))


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


def _start_backends(e2e_dir: Path, specs: list[tuple[str, tuple[str, ...]]]):
    started: list[Backend] = []
    try:
        for name, extra in specs:
            b = Backend(name, e2e_dir, extra)
            _BACKENDS.append(b)
            b.start()
            started.append(b)
    except BaseException:
        for b in started:
            b.stop()
        raise
    return started


def audit_lines(path: Path, want) -> list[dict]:
    """The audit log's lines, once `want(lines)` holds (each worker hands its lines to the
    writer every 250 ms)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if want(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


@pytest.fixture(scope="session")
def backends(e2e_dir: Path):
    """Two session-ful MCP servers, "py-a" and "py-b"."""
    started = _start_backends(e2e_dir, [("py-a", ()), ("py-b", ())])
    yield started
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def stateless_backend(e2e_dir: Path):
    """One MCP server started with the SDK's stateless options."""
    (b,) = _start_backends(e2e_dir, [("py-stateless", ("--stateless",))])
    yield b
    b.stop()


@pytest.fixture(scope="session")
def proxy_url(backends: list[Backend], e2e_dir: Path):
    """URL clients use: mcplb in front of py-a and py-b (or py-a itself with E2E_DIRECT=1)."""
    if DIRECT:
        yield backends[0].url
        return
    proxy = _start_proxy(e2e_dir, "py", backends)
    yield proxy.url
    proxy.stop()


@pytest.fixture(scope="session")
def stateless_proxy_url(stateless_backend: Backend, e2e_dir: Path):
    """URL of a second mcplb in front of the stateless backend (or the backend with E2E_DIRECT=1)."""
    if DIRECT:
        yield stateless_backend.url
        return
    proxy = _start_proxy(e2e_dir, "pystateless", [stateless_backend])
    yield proxy.url
    proxy.stop()


@pytest.fixture
def needs_proxy() -> None:
    """For tests that only make sense with the proxy balancing over several backends."""
    if DIRECT:
        pytest.skip("E2E_DIRECT=1: needs the proxy in front of both backends")


# ---------------------------------------------------------------------------------------------
# failure reports: show what the proxy and backends said


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        for proxy in _PROXIES:
            if proxy.lines_seen == proxy.lines_reported:
                report.sections.append((f"mcplb {proxy.config_path.name}", "(no new output since the last failure)"))
            else:
                proxy.lines_reported = proxy.lines_seen
                report.sections.append((f"mcplb {proxy.config_path.name}", proxy.report()))
        for b in _BACKENDS:
            tail = _tail(b.log_path, 20)
            if tail:
                report.sections.append((f"backend {b.name} log tail", tail))
    return report
