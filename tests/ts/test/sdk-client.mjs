// What the TypeScript SDK tests share on the client side: a Client that answers sampling,
// elicitation and roots and records what the server sent it, the text of a tool result, a
// progress call, the sampling round trip's checks, and closing clients at the end.

import assert from "node:assert/strict";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceListChangedNotificationSchema,
  ResourceUpdatedNotificationSchema,
  ToolListChangedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";

import { recordingFetch, waitFor } from "./harness.mjs";

/**
 * A client with sampling, elicitation and roots (the sampling answer names the client; the
 * elicitation answer gives `elicitedName`, default `Ada via NAME`; roots/list answers `[root]`),
 * recording in `seen` the server's requests, notifications and every HTTP exchange. With
 * `plain` it declares none of them (the SDK refuses handlers it did not declare).
 */
export async function connectClient(url, name, { plain = false, root, elicitedName } = {}) {
  const seen = { sampling: [], elicitation: [], roots: 0, notifications: [], http: [] };
  const client = new Client(
    { name, version: "1.0.0" },
    { capabilities: plain ? {} : { sampling: {}, elicitation: { form: {} }, roots: { listChanged: true } } },
  );
  if (!plain) {
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
      seen.sampling.push(req.params);
      return {
        role: "assistant",
        content: { type: "text", text: `sampled by ${name}` },
        model: "mcplb-test-model",
        stopReason: "endTurn",
      };
    });
    client.setRequestHandler(ElicitRequestSchema, async (req) => {
      seen.elicitation.push(req.params);
      return { action: "accept", content: { name: elicitedName ?? `Ada via ${name}`, check: true, integer: 7 } };
    });
    client.setRequestHandler(ListRootsRequestSchema, async () => {
      seen.roots += 1;
      return { roots: root ? [root] : [] };
    });
  }
  for (const schema of [
    ToolListChangedNotificationSchema,
    ResourceListChangedNotificationSchema,
    ResourceUpdatedNotificationSchema,
    LoggingMessageNotificationSchema,
  ]) {
    client.setNotificationHandler(schema, (n) => {
      seen.notifications.push({ ...n, at: Date.now() });
    });
  }
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: recordingFetch(seen.http) });
  await client.connect(transport);
  return { name, client, transport, seen };
}

/** The text items of a tool result, joined with `sep`. */
export function text(result, sep = "\n") {
  return (result.content ?? [])
    .filter((c) => c.type === "text")
    .map((c) => c.text)
    .join(sep);
}

/** server-everything's `trigger-long-running-operation`, with the time of each progress event. */
export async function progressCall(c, args) {
  const events = [];
  const started = Date.now();
  const result = await c.client.callTool({ name: "trigger-long-running-operation", arguments: args }, undefined, {
    onprogress: (p) => events.push({ ...p, at: Date.now() - started }),
  });
  return { result, events, resultAt: Date.now() - started };
}

/**
 * A progress call of `steps` steps over `duration` s: every step arrives, in order, and the first
 * one well before the result (the steps are at least 500 ms apart), so nothing buffered the stream.
 */
export async function assertProgressStreams(c, { duration = 2, steps = 4 } = {}) {
  const { result, events, resultAt } = await progressCall(c, { duration, steps });
  assert.match(text(result), /Long running operation completed/);
  assert.deepEqual(
    events.map((e) => [e.progress, e.total]),
    Array.from({ length: steps }, (_, i) => [i + 1, steps]),
  );
  assert.ok(
    events[0].at < resultAt - 1000,
    `first progress at ${events[0].at} ms, result at ${resultAt} ms: the stream was buffered`,
  );
}

/**
 * server-everything's `trigger-sampling-request` from client `c`: the request reached `c`, its
 * answer reached the tool, and the answer's POST got 202 (the tool result can overtake it).
 */
export async function assertSamplingRoundTrip(c) {
  const result = await c.client.callTool({
    name: "trigger-sampling-request",
    arguments: { prompt: "say hi", maxTokens: 20 },
  });
  assert.equal(c.seen.sampling.length, 1);
  assert.match(c.seen.sampling[0].messages[0].content.text, /say hi/);
  assert.match(text(result), new RegExp(`sampled by ${c.name}`));
  assert.match(text(result), /mcplb-test-model/);
  const answer = await waitFor(
    () =>
      c.seen.http.find(
        (h) => h.method === "POST" && h.body?.result?.model === "mcplb-test-model" && h.status !== undefined,
      ),
    5000,
    "the HTTP status of the client's sampling answer POST",
  );
  assert.equal(answer.status, 202, `answer POST got HTTP ${answer.status}`);
}

/** Close every client, ignoring the ones already gone. */
export async function closeClients(clients) {
  for (const c of clients) {
    try {
      await c?.client.close();
    } catch {
      /* ignore */
    }
  }
}

/**
 * A `withLogs(fn)` for a describe block: runs `fn` and, when it fails, appends the last lines of
 * each process `procs()` returns ([label, proc, lines] triples) to the assertion's message.
 */
export function withLogsOf(procs) {
  return async (fn) => {
    try {
      return await fn();
    } catch (e) {
      for (const [label, proc, lines] of procs()) e.message += `\n--- ${label} ---\n${proc?.tail(lines)}`;
      throw e;
    }
  };
}
