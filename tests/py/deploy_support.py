"""Helpers for the tests of deploy/ (Kubernetes manifests, Helm chart, Dockerfile, systemd unit,
Grafana dashboard): real mock backends, the manifests' config moved to loopback, and the
commands the manifests run, run here against the built mcplb (MCPLB_BIN)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from conftest import REPO, _stop, free_port, wait_port

DEPLOY = REPO / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
CHART_DIR = DEPLOY / "helm" / "mcplb"


def mcplb_bin() -> str:
    return os.environ.get("MCPLB_BIN") or str(REPO / "target" / "debug" / "mcplb")


def load_bin() -> str:
    return os.environ.get("MCPLB_LOAD_BIN") or str(REPO / "target" / "debug" / "mcplb-load")


def yaml_objects(text: str) -> list[dict]:
    """Every non-empty YAML document of a manifest text."""
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objects: list[dict]) -> dict[str, dict]:
    """The objects by kind (each kind once in these manifests)."""
    kinds: dict[str, dict] = {}
    for o in objects:
        assert o["kind"] not in kinds, f"two {o['kind']} objects"
        kinds[o["kind"]] = o
    return kinds


@contextlib.contextmanager
def mock_backends(n: int):
    """`n` session-ful mock MCP servers (mcplb-load mock); yields their URLs."""
    procs, urls = [], []
    try:
        for i in range(n):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [load_bin(), "mock", "--listen", f"127.0.0.1:{port}", "--name", f"m{i}"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(port)
            urls.append(f"http://127.0.0.1:{port}/mcp")
        yield urls
    finally:
        for p in procs:
            _stop(p)


def replace_once(text: str, old: str, new: str) -> str:
    n = text.count(old)
    assert n == 1, f"expected `{old}` once in the config, found it {n} times"
    return text.replace(old, new)


def localize(config: str, backend_urls: list[str]) -> tuple[str, int]:
    """The manifests' TOML with only its addresses changed for this machine: the client listener
    on 127.0.0.1:0, the admin port on a free loopback port (returned: `mcplb probe --config`
    reads it from the file), each backend URL replaced by a mock's. Everything else, the
    secret placeholders included, is left as it is."""
    cfg = tomllib.loads(config)
    admin_port = free_port()
    out = replace_once(config, f'"{cfg["proxy"]["listen"]}"', '"127.0.0.1:0"')
    out = replace_once(out, f'"{cfg["admin"]["listen"]}"', f'"127.0.0.1:{admin_port}"')
    originals = [b if isinstance(b, str) else b["url"] for g in cfg["servers"] for b in g["backends"]]
    assert len(originals) <= len(backend_urls), "not enough mock backends"
    for old, new in zip(originals, backend_urls):
        out = replace_once(out, f'"{old}"', f'"{new}"')
    # Nothing else changed: the same document but for those values.
    moved = tomllib.loads(out)
    moved["proxy"]["listen"], moved["admin"]["listen"] = cfg["proxy"]["listen"], cfg["admin"]["listen"]
    for g in moved["servers"]:
        for i, b in enumerate(g["backends"]):
            url = b if isinstance(b, str) else b["url"]
            original = originals[backend_urls.index(url)]
            if isinstance(b, str):
                g["backends"][i] = original
            else:
                b["url"] = original
    assert moved == cfg
    return out, admin_port


def tool_on_path(tmp: Path) -> dict:
    """An environment whose PATH finds `mcplb` (the built binary) as the image does."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    link = bindir / "mcplb"
    if not link.exists():
        link.symlink_to(mcplb_bin())
    return {"PATH": f"{bindir}:/usr/bin:/bin", "LANG": "C.UTF-8"}


def run_init_script(script: str, env: dict, tmp: Path) -> subprocess.CompletedProcess:
    """Runs an init container's `/bin/sh -c SCRIPT` here, with its environment (paths mapped to
    `tmp` by the caller) and `mcplb` on PATH."""
    return subprocess.run(
        ["/bin/sh", "-c", script],
        env={**tool_on_path(tmp), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def run_image_command(argv: list[str], mapping: dict[str, str], tmp: Path, timeout: float = 15):
    """Runs a command as the container would (argv[0] `mcplb` found on PATH), with paths inside
    the container replaced by their copies here."""
    mapped = [mapping.get(a, a) for a in argv]
    return subprocess.run(mapped, env=tool_on_path(tmp), capture_output=True, text=True, timeout=timeout)


def seconds(duration: str) -> float:
    """A config duration ("30s", "500ms", "2m") in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration.strip())
    assert m, f"not a duration: {duration}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
