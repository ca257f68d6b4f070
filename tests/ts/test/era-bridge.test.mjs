// The TypeScript SDK 1.x client (2025 era: initialize, sessions, server-to-client requests)
// against a server of the 2026-07-28 revision alone (tests/py/modern_server.py, Python SDK),
// through mcplb's era bridge (issue 20: "a 2025-era client (TS SDK 1.x) against a
// 2026-07-28-only server"): lists, a call, a streaming call whose progress arrives before its
// result, and a tool that asks its caller for input the 2026-07-28 way (input_required, two
// rounds: an elicitation and roots/list, then sampling), which mcplb turns into requests on the
// call's SSE answer that the SDK's handlers answer. The TypeScript SDK has no 2026-07-28 client
// (1.32.2 is npm's newest), so the other direction is tested with the Python SDK only.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

import { startMcplb, startPythonServer } from "./harness.mjs";
import { text as sdkText } from "./sdk-client.mjs";

const text = (result) => sdkText(result, "");

describe("TypeScript SDK 1.x client through the era bridge to a 2026-07-28-only server", () => {
  const procs = [];
  let client;
  let transport;
  const seen = [];

  before(async () => {
    const modern = await startPythonServer("modern_server.py", "modern_server.py", ["--name", "modern"]);
    procs.push(modern);
    const lb = await startMcplb([modern.url], { name: "era-bridge" });
    procs.push(lb);
    client = new Client(
      { name: "ts-legacy", version: "1.0.0" },
      { capabilities: { sampling: {}, elicitation: { form: {} }, roots: {} } },
    );
    client.setRequestHandler(ElicitRequestSchema, async (req) => {
      seen.push(`elicit:${req.params.message}`);
      return { action: "accept", content: { name: "Ada" } };
    });
    client.setRequestHandler(ListRootsRequestSchema, async () => {
      seen.push("roots");
      return { roots: [{ uri: "file:///work/ada", name: "ada" }] };
    });
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
      seen.push(`sample:${req.params.messages[0].content.text}`);
      return { role: "assistant", content: { type: "text", text: "roses" }, model: "m", stopReason: "endTurn" };
    });
    transport = new StreamableHTTPClientTransport(new URL(lb.url));
    await client.connect(transport);
  });

  after(async () => {
    try {
      await transport?.terminateSession();
    } catch {
      // the session may already be gone
    }
    await client?.close();
    for (const p of procs.reverse()) await p.stop();
  });

  test("initialize is answered from the server's server/discover, in a session of mcplb's", () => {
    assert.ok(transport.sessionId, "mcplb gives the 2025-era client a session id");
    assert.equal(client.getServerVersion()?.name, "modern");
    assert.ok(client.getServerCapabilities()?.tools, "tools capability from server/discover");
  });

  test("lists and a call", async () => {
    const { tools } = await client.listTools();
    const names = tools.map((t) => t.name);
    for (const n of ["add", "slow_progress", "introduce"]) assert.ok(names.includes(n), names.join(","));
    assert.equal(text(await client.callTool({ name: "add", arguments: { a: 2, b: 3 } })), "5");
  });

  test("a streaming call: progress arrives before the result", async () => {
    const events = [];
    const started = Date.now();
    const result = await client.callTool({ name: "slow_progress", arguments: { steps: 3, delay: 0.3 } }, undefined, {
      onprogress: (p) => events.push({ ...p, at: Date.now() - started }),
    });
    const resultAt = Date.now() - started;
    assert.equal(events.length, 3, JSON.stringify(events));
    assert.deepEqual(
      events.map((e) => e.progress),
      [1, 2, 3],
    );
    assert.ok(events[0].at < resultAt - 300, `first progress at ${events[0].at} ms, result at ${resultAt} ms`);
    assert.ok(!result.isError, JSON.stringify(result));
  });

  test("input_required rounds become elicitation, roots/list and sampling requests the SDK answers", async () => {
    const result = await client.callTool({ name: "introduce", arguments: {} });
    assert.equal(text(result), "Ada|file:///work/ada|roses", JSON.stringify(result));
    assert.deepEqual(seen.slice(0, 2).sort(), ["elicit:Who is calling?", "roots"], seen.join(" "));
    assert.deepEqual(seen.slice(2), ["sample:A line for Ada"], seen.join(" "));
    // The session goes on.
    assert.equal(text(await client.callTool({ name: "add", arguments: { a: 1, b: 2 } })), "3");
  });
});
