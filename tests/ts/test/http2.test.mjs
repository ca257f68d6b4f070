// A browser-like HTTP/2 client through mcplb: Node's own `http2` module (nghttp2, another
// implementation than the `h2` crate mcplb speaks and than the Python tests' `h2` package)
// carries the official TypeScript SDK client over ONE h2c connection (prior knowledge) to
// mcplb, in front of server-everything. Over that one connection: the session's GET stream,
// ten streaming tool calls at once (progress notifications as SSE while all ten run), a
// notification on the GET stream while they run, and DELETE. A browser limited to six
// HTTP/1.1 connections per host could not hold eleven open streams at once; HTTP/2 does.

import assert from "node:assert/strict";
import { setMaxListeners } from "node:events";
import http2 from "node:http2";
import { after, before, describe, test } from "node:test";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ResourceListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

import { startEverything, startMcplbWithConfig, waitFor } from "./harness.mjs";
import { text } from "./sdk-client.mjs";

const { NGHTTP2_CANCEL } = http2.constants;

/**
 * A WHATWG `fetch` over one `http2` client session: each call is a stream of that session,
 * its answer body a ReadableStream fed frame by frame (never buffered whole), an aborted
 * signal resets the stream (RST_STREAM CANCEL). `log` records every exchange; `open` counts
 * the streams in flight and their peak.
 */
function h2Fetch(session, log, open) {
  return async (url, init = {}) => {
    const u = new URL(url);
    const method = init.method ?? "GET";
    const headers = { ":method": method, ":path": u.pathname + u.search };
    for (const [k, v] of new Headers(init.headers)) headers[k] = v;
    const hasBody = init.body !== undefined && init.body !== null;
    const entry = { method, body: parseJson(init.body), status: undefined, contentType: undefined };
    log.push(entry);
    const stream = session.request(headers, { endStream: !hasBody });
    open.now += 1;
    open.peak = Math.max(open.peak, open.now);
    stream.once("close", () => (open.now -= 1));
    // Errors reach the body stream or the pending answer below; never an uncaught one.
    stream.on("error", () => {});
    if (hasBody) stream.end(init.body);
    const abort = () => {
      if (!stream.closed) stream.close(NGHTTP2_CANCEL);
    };
    if (init.signal?.aborted) abort();
    // The SDK gives every request its transport's one signal: eleven streams listen at once.
    if (init.signal) setMaxListeners(64, init.signal);
    init.signal?.addEventListener("abort", abort, { once: true });
    stream.once("close", () => init.signal?.removeEventListener("abort", abort));
    const head = await new Promise((resolve, reject) => {
      stream.once("response", resolve);
      stream.once("error", reject);
      stream.once("close", () => reject(new Error(`stream closed (code ${stream.rstCode}) before an answer`)));
    });
    const status = head[":status"];
    const out = new Headers();
    for (const [k, v] of Object.entries(head)) {
      if (!k.startsWith(":")) out.append(k, Array.isArray(v) ? v.join(", ") : String(v));
    }
    entry.status = status;
    entry.contentType = out.get("content-type");
    let done = false;
    const body =
      status === 204 || status === 304
        ? null
        : new ReadableStream({
            start(controller) {
              // Once the reader cancelled (or the stream ended), the controller takes nothing.
              const live = () => !done;
              stream.on("data", (chunk) => live() && controller.enqueue(new Uint8Array(chunk)));
              stream.once("end", () => live() && ((done = true), controller.close()));
              stream.once("error", (e) => live() && ((done = true), controller.error(e)));
            },
            cancel() {
              done = true;
              abort();
            },
          });
    return new Response(body, { status, headers: out });
  };
}

function parseJson(body) {
  try {
    return typeof body === "string" ? JSON.parse(body) : undefined;
  } catch {
    return undefined;
  }
}

/** mcplb's counters from its admin port. */
async function counters(admin) {
  const r = await fetch(`http://${admin}/stats`);
  return (await r.json()).counters;
}

describe("one HTTP/2 connection (Node's http2, h2c prior knowledge) carrying a browser-like MCP client through mcplb", () => {
  let backend;
  let lb;
  let admin;
  let session;
  let client;
  let transport;
  const http = [];
  const open = { now: 0, peak: 0 };
  const notifications = [];

  before(async () => {
    backend = await startEverything("h2-backend");
    lb = await startMcplbWithConfig(
      [
        "[proxy]",
        'listen = "127.0.0.1:0"',
        "workers = 2",
        "",
        "[admin]",
        'listen = "127.0.0.1:0"',
        "",
        "[[servers]]",
        'name = "everything"',
        'path = "/mcp"',
        `backends = [${JSON.stringify(backend.url)}]`,
        "",
      ].join("\n"),
      { label: "mcplb-h2" },
    );
    admin = (await lb.waitForLine(/admin on http:\/\/([^/]+)\//, 15_000))[1];
    session = http2.connect(`http://${lb.addr}`);
    session.on("error", () => {});
    await new Promise((resolve, reject) => {
      session.once("connect", resolve);
      session.once("error", reject);
    });
    client = new Client({ name: "mcplb-h2-browser", version: "1.0.0" }, { capabilities: {} });
    client.setNotificationHandler(ResourceListChangedNotificationSchema, (n) => notifications.push(n));
    transport = new StreamableHTTPClientTransport(new URL(`${lb.url}`), { fetch: h2Fetch(session, http, open) });
    await client.connect(transport);
  });

  after(async () => {
    try {
      await client?.close();
    } catch {
      /* ignore */
    }
    session?.destroy();
    await lb?.stop();
    await backend?.stop();
  });

  async function withLogs(fn) {
    try {
      return await fn();
    } catch (e) {
      e.message += `\n--- mcplb output ---\n${lb?.tail(40)}\n--- backend ---\n${backend?.tail(15)}`;
      throw e;
    }
  }

  test("initialize over HTTP/2: server info and a session id", () =>
    withLogs(async () => {
      assert.equal(client.getServerVersion().name, "mcp-servers/everything");
      assert.ok(transport.sessionId, "mcplb must hand the client a session id");
      // The SDK opens the session's GET stream once initialized.
      const get = await waitFor(() => http.find((h) => h.method === "GET" && h.status !== undefined), 5000, "the GET stream");
      assert.equal(get.status, 200, `GET stream: ${JSON.stringify(get)}`);
      assert.match(get.contentType ?? "", /text\/event-stream/);
    }));

  test("ten streaming tool calls at once and a GET stream notification, all on the one connection", () =>
    withLogs(async () => {
      const N = 10;
      const steps = 8;
      const events = Array.from({ length: N }, () => []);
      const resultAt = [];
      let order = 0;
      const calls = Array.from({ length: N }, (_, i) =>
        client
          .callTool({ name: "trigger-long-running-operation", arguments: { duration: 4, steps } }, undefined, {
            onprogress: (p) => events[i].push({ progress: p.progress, seq: order++ }),
          })
          .then((r) => {
            resultAt[i] = order++;
            return r;
          }),
      );
      // While the ten calls stream, a server notification reaches the client on the GET stream.
      const before = notifications.length;
      const data = `data:text/plain;base64,${Buffer.from("h2 through mcplb\n".repeat(10)).toString("base64")}`;
      const link = await client.callTool({
        name: "gzip-file-as-resource",
        arguments: { name: "h2.txt.gz", data, outputType: "resourceLink" },
      });
      assert.equal(link.content[0].type, "resource_link", JSON.stringify(link));
      await waitFor(() => notifications.length > before, 5000, "notifications/resources/list_changed on the GET stream");

      const results = await Promise.all(calls);
      for (const [i, r] of results.entries()) {
        assert.match(text(r), /Long running operation completed/, `call ${i}`);
        assert.deepEqual(
          events[i].map((e) => e.progress),
          Array.from({ length: steps }, (_, k) => k + 1),
          `call ${i}: progress notifications`,
        );
      }
      // Streamed, and at once: every call's first progress came before any call's result (a
      // front that buffered an SSE answer, or ran the streams one after another, could not
      // do that; steps are half a second apart).
      const firstResult = Math.min(...resultAt);
      for (const [i, ev] of events.entries()) {
        assert.ok(ev[0].seq < firstResult, `call ${i}: first progress after a result: streams not concurrent`);
      }
      // Eleven streams were open at once on the connection: ten calls and the GET stream.
      assert.ok(open.peak >= N + 1, `at most ${open.peak} streams open at once`);
      assert.ok(!session.destroyed && !session.closed, "the HTTP/2 connection did not survive");
    }));

  test("cancelling a call resets its stream; the connection and the session live on", () =>
    withLogs(async () => {
      const ac = new AbortController();
      const call = client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 10, steps: 20 } },
        undefined,
        { signal: ac.signal, onprogress: () => ac.abort("test cancels") },
      );
      await assert.rejects(call);
      const cancelled = await waitFor(
        () => http.find((h) => h.body?.method === "notifications/cancelled" && h.status !== undefined),
        5000,
        "the notifications/cancelled POST",
      );
      assert.equal(cancelled.status, 202);
      const echo = await client.callTool({ name: "echo", arguments: { message: "after a reset" } });
      assert.equal(text(echo), "Echo: after a reset");
    }));

  test("mcplb saw one HTTP/2 connection carrying every request; DELETE ends the session", () =>
    withLogs(async () => {
      await transport.terminateSession();
      const del = http.find((h) => h.method === "DELETE");
      assert.equal(del?.status, 200, `DELETE got ${del?.status}`);
      // Statistics are folded in once a second.
      let c = await counters(admin);
      for (const deadline = Date.now() + 10_000; c.h2_streams < http.length && Date.now() < deadline; ) {
        await new Promise((r) => setTimeout(r, 200));
        c = await counters(admin);
      }
      assert.equal(c.h2_connections, 1, JSON.stringify(c));
      assert.ok(c.h2_streams >= http.length, `h2_streams ${c.h2_streams}, requests made ${http.length}`);
      assert.equal(c.h2_protocol_errors, 0);
    }));
});
