"""deploy/grafana/mcplb.json asks only for what mcplb exports: a real mcplb (MCPLB_BIN) serves
sessions, tool calls and rate-limited calls, then every PromQL expression of the dashboard
(parsed with promql-parser, Grafana's variables substituted) is checked against its /metrics:
each metric name is exported, each label a selector matches or an aggregation keeps exists on
it, and each value a selector asks for equal (dimension="server", state="healthy") occurs."""

from __future__ import annotations

import json
import re
import time

import httpx
import promql_parser as promql
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, start_proxy_file
from deploy_support import DEPLOY, mock_backends

DASHBOARD = DEPLOY / "grafana" / "mcplb.json"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Grafana's variables, replaced by what they stand for in a query.
VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*", "$server": ".*"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(d: dict) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]


def substituted(expr: str) -> str:
    for var, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def scrape(admin: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets it is exported with."""
    text = httpx.get(f"http://{admin}/metrics").text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(dict(s.labels))
    return samples


def check_expression(title: str, expr: str, exported: dict[str, list[dict[str, str]]]) -> list[str]:
    problems: list[str] = []
    tree = promql.parse(substituted(expr))

    def selectors(node) -> list:
        found = []
        promql.walk(node, lambda n: found.append(n) if isinstance(n, promql.VectorSelector) else None)
        return found

    def visit(node):
        if isinstance(node, promql.VectorSelector):
            name = node.name
            if name not in exported:
                problems.append(f"{title}: `{name}` is not exported")
                return
            for m in node.matchers.matchers:
                if m.name in TARGET_LABELS:
                    continue
                values = [ls[m.name] for ls in exported[name] if m.name in ls]
                if not values:
                    problems.append(f"{title}: `{name}` has no label `{m.name}`")
                elif m.op == promql.MatchOp.Equal and m.value not in values:
                    problems.append(f"{title}: `{name}` has no series with {m.name}=\"{m.value}\"")
                elif m.op == promql.MatchOp.Re and not any(re.fullmatch(m.value, v) for v in values):
                    problems.append(f"{title}: no `{name}` series matches {m.name}=~\"{m.value}\"")
        elif isinstance(node, promql.AggregateExpr) and node.modifier:
            kept = set(node.modifier.labels) - TARGET_LABELS
            inside = [exported.get(s.name, []) for s in selectors(node.expr)]
            for label in kept:
                if not any(label in ls for sets in inside for ls in sets):
                    problems.append(f"{title}: `by ({label})` names a label none of its metrics has")

    promql.walk(tree, visit)
    return problems


def test_dashboard_is_well_formed():
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "job", "instance", "server"}
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}"
    exprs = " ".join(e for _, e in queries(d))
    # What the dashboard is for: request and error rates, p50/p95/p99 per server group and
    # backend, rate-limit rejections, backend health.
    for needed in (
        "mcplb_requests_total", "mcplb_upstream_5xx_total", "mcplb_limit_rejected_total",
        "mcplb_backend_state", "mcplb_health_changes_total",
    ):
        assert needed in exprs, needed
    for dim in ("server", "backend"):
        for q in ("0.5", "0.95", "0.99"):
            assert re.search(
                rf'histogram_quantile\({q}, sum by \(le, name\) \(rate\(mcplb_request_total_seconds_bucket\{{dimension="{dim}"',
                exprs,
            ), (dim, q)


def test_dashboard_metrics_are_exported(tmp_path):
    d = dashboard()
    with mock_backends(2) as urls:
        admin = f"127.0.0.1:{free_port()}"
        cfg = tmp_path / "mcplb.toml"
        cfg.write_text(
            '[proxy]\nlisten = "127.0.0.1:0"\nworkers = 2\n\n'
            f'[admin]\nlisten = "{admin}"\n\n'
            '[[servers]]\nname = "tools"\npath = "/mcp"\n'
            f'backends = ["{urls[0]}", {{ url = "{urls[1]}", name = "second" }}]\n\n'
            '[[limits]]\nmethod = "tools/call"\nkey = "global"\nrate = 1\nburst = 3\n'
        )
        proxy = start_proxy_file(cfg)
        try:
            url = f"http://{proxy.addr}/mcp"
            hdrs = {"accept": "application/json, text/event-stream"}
            init = {
                "jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            }
            statuses = []
            with httpx.Client(headers=hdrs, timeout=10) as c:
                for _ in range(2):  # two sessions: one per backend (round robin)
                    r = c.post(url, json=init)
                    assert r.status_code == 200, r.text
                    sid = {"mcp-session-id": r.headers["mcp-session-id"]}
                    for i in range(1, 6):
                        call = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
                        statuses.append(c.post(url, json=call, headers=sid).status_code)
                    c.post(url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, headers=sid)
            assert 200 in statuses and 429 in statuses, statuses
            # Cores fold their histograms into the shared view once a second.
            deadline = time.monotonic() + 10
            while True:
                exported = scrape(admin)
                dims = {ls.get("dimension") for ls in exported.get("mcplb_request_total_seconds_bucket", [])}
                if {"server", "backend"} <= dims or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            proxy.stop()

    problems = [p for title, expr in queries(d) for p in check_expression(title, expr, exported)]
    # The template variables' queries: label_values(SELECTOR, LABEL).
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
        assert m, v["query"]
        problems += check_expression(f"variable {v['name']}", f"count by ({m.group(2)}) ({m.group(1)})", exported)
    assert not problems, "\n".join(problems)


def test_check_catches_a_name_mcplb_does_not_export():
    exported = {"mcplb_requests_total": [{}]}
    assert check_expression("t", "rate(mcplb_requests_total[5m])", exported) == []
    assert check_expression("t", "rate(mcplb_request_total[5m])", exported)
    assert check_expression("t", 'sum by (name) (rate(mcplb_requests_total{dimension="x"}[5m]))', exported)
