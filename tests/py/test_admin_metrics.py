"""The admin port's /metrics is valid Prometheus text: parsed by the official Python client's
parser after real traffic through mcplb to the bundled mock backend."""

import os
import re
import subprocess
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, _stop, free_port, wait_port


def test_metrics_parse_with_prometheus_client(tmp_path):
    load_bin = os.environ.get("MCPLB_LOAD_BIN") or str(REPO / "target" / "debug" / "mcplb-load")
    mcplb_bin = os.environ.get("MCPLB_BIN") or str(REPO / "target" / "debug" / "mcplb")
    mock_port = free_port()
    mock = subprocess.Popen(
        [load_bin, "mock", "--listen", f"127.0.0.1:{mock_port}", "--name", "m", "--stateless"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = None
    try:
        wait_port(mock_port)
        cfg = tmp_path / "mcplb.toml"
        cfg.write_text(
            '[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\n\n[admin]\nlisten = "127.0.0.1:0"\n\n'
            f'[[servers]]\nname = "py"\npath = "/mcp"\nbackends = ["http://127.0.0.1:{mock_port}/mcp"]\n'
        )
        proxy = subprocess.Popen(
            [mcplb_bin, "run", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        addr = admin = None
        deadline = time.monotonic() + 15
        while (addr is None or admin is None) and time.monotonic() < deadline:
            line = proxy.stdout.readline()
            if m := re.search(r"listening on (\S+:\d+)", line):
                addr = m.group(1)
            if m := re.search(r"admin on http://([^/]+)/", line):
                admin = m.group(1)
        assert addr and admin, "mcplb did not announce its addresses"
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
        with httpx.Client() as c:
            for i in range(25):
                body["id"] = i
                r = c.post(f"http://{addr}/mcp", json=body, headers={"accept": "application/json, text/event-stream"})
                assert r.status_code == 200
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"http://{admin}/metrics").text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            fam = families.get("mcplb_request_total_seconds")
            count = None
            if fam is not None:
                for s in fam.samples:
                    if s.name.endswith("_count") and s.labels == {"dimension": "tool", "name": "echo"}:
                        count = s.value
            if count == 25 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert count == 25, text[:2000]
        assert fam.type == "histogram"
        # Buckets are cumulative and end at +Inf == count.
        buckets = [
            s for s in fam.samples
            if s.name.endswith("_bucket") and s.labels.get("dimension") == "tool" and s.labels.get("name") == "echo"
        ]
        values = [s.value for s in buckets]
        assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf" and values[-1] == 25
        assert families["mcplb_requests"].type == "counter"
    finally:
        if proxy is not None:
            _stop(proxy)
        _stop(mock)
