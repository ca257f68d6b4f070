"""The Dockerfile and the systemd unit. No container engine runs on this machine, so the image is
not built here: hadolint lints the Dockerfile, and the commands the image runs (ENTRYPOINT and
CMD, HEALTHCHECK) run here against the built mcplb. `systemd-analyze verify` checks the unit
(Debian's systemd, installed if missing), and its ExecStartPre/ExecStart/ExecReload and stop
signal are exercised on a real mcplb."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from conftest import REPO, free_port, start_proxy_file
from deploy_support import DEPLOY, K8S_DIR, by_kind, mock_backends, mcplb_bin, run_image_command, yaml_objects

UNIT = DEPLOY / "systemd" / "mcplb.service"


def config_for(backend: str, admin_port: int, token: str | None = None) -> str:
    admin = f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n' + (f'token = "{token}"\n' if token else "")
    return (
        '[proxy]\nlisten = "127.0.0.1:0"\nworkers = 1\nshutdown_timeout = "5s"\n\n' + admin
        + f'\n[[servers]]\nname = "t"\npath = "/mcp"\nbackends = ["{backend}"]\n'
    )


# --- Dockerfile --------------------------------------------------------------------------------


def stages(parser: DockerfileParser) -> list[list[dict]]:
    """The Dockerfile's instructions, one list per FROM."""
    out: list[list[dict]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def exec_form(value: str) -> list[str]:
    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), value
    return argv


def test_dockerfile_lints_and_builds_a_small_non_root_image():
    hadolint = Path(sys.executable).parent / "hadolint"
    lint = subprocess.run([str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    build, run = stages(parser)
    # Build stage: the Rust toolchain image, at least the workspace's rust-version.
    m = re.fullmatch(r"rust:(\d+)\.(\d+)-slim-\w+ AS build", build[0]["value"])
    assert m, build[0]["value"]
    need = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    assert (int(m.group(1)), int(m.group(2))) >= tuple(int(x) for x in need.split(".")[:2])
    # The release build (scripts/release.sh: PGO, BOLT on request, trained in the stage), with the
    # LLVM tools and the Python the training needs.
    runs = [i["value"] for i in build if i["instruction"] == "RUN"]
    assert any(all(p in r for p in ("llvm-19", "bolt-19", "python3")) for r in runs), runs
    release = next(r for r in runs if "scripts/release.sh" in r)
    assert "/mcplb /out/mcplb" in release
    # Run stage: slim base, the binary from the build stage, a numeric non-root user.
    assert run[0]["value"].startswith("debian:") and run[0]["value"].endswith("-slim")
    instructions = {i["instruction"]: i["value"] for i in run}
    assert instructions["COPY"] == "--from=build /out/mcplb /usr/local/bin/mcplb"
    uid = instructions["USER"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    # The Kubernetes pod runs as that user and exposes the ports the image declares.
    pod = by_kind(yaml_objects((K8S_DIR / "deployment.yaml").read_text()))["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    ports = sorted(p["containerPort"] for p in pod["containers"][0]["ports"])
    assert sorted(int(p) for p in instructions["EXPOSE"].split()) == ports
    # The image's shell and sed serve the init container; tini is the entrypoint.
    assert "tini" in instructions["RUN"]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target" in ignored and ".git" in ignored


def test_dockerfile_lock_is_current():
    """`cargo build --locked` in the image fails if Cargo.lock is out of date."""
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    r = subprocess.run(
        [cargo, "metadata", "--locked", "--offline", "--format-version", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_image_commands_run_against_mcplb(tmp_path):
    """ENTRYPOINT + CMD (tini's part aside) and the HEALTHCHECK, run here with the image's config
    path mapped to a test config."""
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    run = stages(parser)[-1]
    ins = {i["instruction"]: i["value"] for i in run}
    entrypoint, cmd = exec_form(ins["ENTRYPOINT"]), exec_form(ins["CMD"])
    assert entrypoint[:2] == ["/usr/bin/tini", "--"]
    argv = entrypoint[2:] + cmd
    assert argv[:3] == ["mcplb", "run", "--config"]
    health = re.search(r"CMD (\[.*\])", ins["HEALTHCHECK"], re.S)
    assert health, ins["HEALTHCHECK"]
    check = exec_form(health.group(1))
    image_config = argv[3]
    assert check[:4] == ["mcplb", "probe", "--config", image_config]

    with mock_backends(1) as (url,):
        admin_port = free_port()
        cfg = tmp_path / "mcplb.toml"
        cfg.write_text(config_for(url, admin_port, token="image-t0ken"))
        proxy = start_proxy_file(cfg)  # `mcplb run --config FILE`, as CMD says
        try:
            r = run_image_command(check, {image_config: str(cfg)}, tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
        finally:
            proxy.stop()
        # With mcplb stopped, the health check fails.
        r = run_image_command(check, {image_config: str(cfg)}, tmp_path)
        assert r.returncode == 1 and "cannot connect" in r.stderr, r.stderr


# --- systemd unit ------------------------------------------------------------------------------


def unit_entries(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit (keys may repeat), comments and sections aside."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("systemd-analyze is missing (Debian package systemd) and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "systemd"], check=True, env=env, timeout=600)
    found = shutil.which("systemd-analyze")
    assert found, "apt-get install systemd did not provide systemd-analyze"
    return found


def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify`, with the binary's install path pointing at the built one (verify
    checks that ExecStart's program exists): no error, no warning."""
    text = UNIT.read_text()
    assert "/usr/local/bin/mcplb " in text
    unit = tmp_path / "mcplb.service"
    unit.write_text(text.replace("/usr/local/bin/mcplb ", f"{mcplb_bin()} "))
    r = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr

    # The checker catches a misspelt option (so the silence above means something).
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSytem=strict").replace("/usr/local/bin/mcplb ", f"{mcplb_bin()} "))
    r = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "ProtectSytem" in r.stdout + r.stderr


def test_systemd_unit_commands_run_mcplb(tmp_path):
    """ExecStartPre and ExecStart start mcplb on a test config, ExecReload's signal reloads it,
    and the stop signal ends it with exit 0 within TimeoutStopSec; the hardening asked for is
    there."""
    e = unit_entries(UNIT.read_text())
    for key, want in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "KillSignal": "SIGTERM", "KillMode": "mixed", "CapabilityBoundingSet": "",
    }.items():
        assert e.get(key) == [want], (key, e.get(key))
    assert int(e["LimitNOFILE"][0]) >= 100_000
    assert e["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    stop_after = float(e["TimeoutStopSec"][0].rstrip("s"))
    assert stop_after >= 30 + 5, "TimeoutStopSec must cover the default proxy.shutdown_timeout (30 s)"

    def argv(line: str, config: Path) -> list[str]:
        a = shlex.split(line)
        assert a[0] == "/usr/local/bin/mcplb" and a[-2:] == ["--config", "/etc/mcplb/mcplb.toml"], line
        return [mcplb_bin(), *a[1:-1], str(config)]

    with mock_backends(1) as (url,):
        cfg = tmp_path / "mcplb.toml"
        cfg.write_text(config_for(url, free_port()))
        pre = subprocess.run(argv(e["ExecStartPre"][0], cfg), capture_output=True, text=True, timeout=30)
        assert pre.returncode == 0 and "valid" in pre.stdout, pre.stdout + pre.stderr
        assert argv(e["ExecStart"][0], cfg)[1:] == ["run", "--config", str(cfg)]
        proxy = start_proxy_file(cfg)  # runs exactly `mcplb run --config FILE`
        try:
            cfg.write_text(cfg.read_text().replace('path = "/mcp"', 'path = "/mcp2"'))
            proxy.proc.send_signal(signal.SIGHUP)  # ExecReload
            deadline = time.monotonic() + 10
            while not any("SIGHUP: configuration reloaded" in line for line in list(proxy.stderr)):
                assert time.monotonic() < deadline, "\n".join(proxy.stderr)
                time.sleep(0.05)
            proxy.proc.send_signal(signal.SIGTERM)  # KillSignal
            assert proxy.proc.wait(timeout=stop_after) == 0
        finally:
            proxy.stop()
