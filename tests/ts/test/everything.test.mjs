// @modelcontextprotocol/server-everything (Streamable HTTP) behind mcplb, driven by the official
// TypeScript SDK client (Client + StreamableHTTPClientTransport) through mcplb.
//
// Two server-everything processes are mcplb's backends, so a server-to-client answer (sampling,
// elicitation, roots) that mcplb routed to the wrong backend would fail: the other process does
// not know the session.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { startEverything, startMcplb, waitFor } from "./harness.mjs";
import {
  assertProgressStreams,
  assertSamplingRoundTrip,
  closeClients,
  connectClient as connectSdkClient,
  text,
  withLogsOf,
} from "./sdk-client.mjs";

const ROOT = { uri: "file:///tmp/mcplb-ts-root", name: "mcplb test root" };

/** A client with sampling, elicitation and roots, recording what the server sent it. */
const connectClient = (url, name = "mcplb-ts-test") =>
  connectSdkClient(url, name, { root: ROOT, elicitedName: "Ada Lovelace" });

describe("server-everything (streamable HTTP, 2 backends) through mcplb with the TypeScript SDK client", () => {
  const backends = [];
  let lb;
  let main; // { client, transport, seen }
  const extraClients = [];

  before(async () => {
    backends.push(await startEverything("backend-0"), await startEverything("backend-1"));
    lb = await startMcplb(backends.map((b) => b.url));
    main = await connectClient(lb.url);
  });

  after(async () => {
    await closeClients([main, ...extraClients]);
    await lb?.stop();
    for (const b of backends) await b.stop();
  });

  /** Attach process output to an assertion failure, for the lead reading CI logs. */
  const withLogs = withLogsOf(() => [
    ["mcplb output", lb, 40],
    ["backend 0", backends[0], 15],
    ["backend 1", backends[1], 15],
  ]);

  test("initialize: server info, capabilities and a session id through mcplb", () =>
    withLogs(async () => {
      const info = main.client.getServerVersion();
      assert.equal(info.name, "mcp-servers/everything");
      const caps = main.client.getServerCapabilities();
      assert.ok(caps.tools && caps.resources && caps.prompts, JSON.stringify(caps));
      assert.ok(main.transport.sessionId, "mcplb must hand the client a session id");
    }));

  test("tools: list, call echo and get-sum", () =>
    withLogs(async () => {
      const { tools } = await main.client.listTools();
      const names = tools.map((t) => t.name);
      for (const n of ["echo", "get-sum", "trigger-long-running-operation", "trigger-sampling-request", "trigger-elicitation-request"]) {
        assert.ok(names.includes(n), `tool ${n} missing from ${names.join(", ")}`);
      }
      const echo = await main.client.callTool({ name: "echo", arguments: { message: "hello through mcplb" } });
      assert.equal(text(echo), "Echo: hello through mcplb");
      const sum = await main.client.callTool({ name: "get-sum", arguments: { a: 2, b: 40 } });
      assert.equal(text(sum), "The sum of 2 and 40 is 42.");
    }));

  test("resources: list, templates, read a static and a templated resource", () =>
    withLogs(async () => {
      const { resources } = await main.client.listResources();
      assert.ok(resources.length > 0, "no resources listed");
      const first = resources[0];
      const read = await main.client.readResource({ uri: first.uri });
      assert.equal(read.contents[0].uri, first.uri);
      assert.ok(read.contents[0].text !== undefined || read.contents[0].blob !== undefined);

      const { resourceTemplates } = await main.client.listResourceTemplates();
      assert.ok(resourceTemplates.length > 0, "no resource templates listed");
      const dyn = await main.client.readResource({ uri: "demo://resource/dynamic/text/7" });
      assert.equal(dyn.contents[0].uri, "demo://resource/dynamic/text/7");
    }));

  test("prompts: list, get simple-prompt and args-prompt", () =>
    withLogs(async () => {
      const { prompts } = await main.client.listPrompts();
      const names = prompts.map((p) => p.name);
      assert.ok(names.includes("simple-prompt") && names.includes("args-prompt"), names.join(", "));
      const simple = await main.client.getPrompt({ name: "simple-prompt" });
      assert.equal(simple.messages[0].content.text, "This is a simple prompt without arguments.");
      const args = await main.client.getPrompt({ name: "args-prompt", arguments: { city: "Lyon", state: "ARA" } });
      assert.equal(args.messages[0].content.text, "What's weather in Lyon, ARA?");
    }));

  test("progress: notifications stream in before the result (not buffered by mcplb)", () =>
    withLogs(() => assertProgressStreams(main)));

  test("sampling: server -> client request and the client's answer POST reach the same backend", () =>
    withLogs(() => assertSamplingRoundTrip(main)));

  test("elicitation: server -> client request, accepted content reaches the tool", () =>
    withLogs(async () => {
      const result = await main.client.callTool({ name: "trigger-elicitation-request", arguments: {} });
      assert.equal(main.seen.elicitation.length, 1);
      assert.ok(main.seen.elicitation[0].requestedSchema.properties.name, "requestedSchema lost its fields");
      const t = text(result);
      assert.match(t, /User provided the requested information/);
      assert.match(t, /- Name: Ada Lovelace/);
      assert.match(t, /- Favorite Integer: 7/);
    }));

  test("roots: server -> client roots/list over the GET stream, answered through mcplb", () =>
    withLogs(async () => {
      const result = await main.client.callTool({ name: "get-roots-list", arguments: {} });
      assert.ok(main.seen.roots >= 1, "the server never asked the client for roots");
      assert.match(text(result), /Current MCP Roots \(1 total\)/);
      assert.match(text(result), /mcplb test root/);
      const get = main.seen.http.find((h) => h.method === "GET");
      assert.ok(get && get.status === 200, `GET stream: ${JSON.stringify(get)}`);
    }));

  test("cancellation: aborting a long call sends notifications/cancelled, and the session lives on", () =>
    withLogs(async () => {
      const ac = new AbortController();
      let progressed = 0;
      const call = main.client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 10, steps: 20 } },
        undefined,
        {
          signal: ac.signal,
          onprogress: () => {
            progressed += 1;
            if (progressed === 1) ac.abort("test cancels");
          },
        },
      );
      const started = Date.now();
      await assert.rejects(call);
      assert.ok(Date.now() - started < 5000, "the call was not cut short by the abort");
      const cancelled = await waitFor(
        () =>
          main.seen.http.find(
            (h) => h.method === "POST" && h.body?.method === "notifications/cancelled" && h.status !== undefined,
          ),
        5000,
        "the notifications/cancelled POST",
      );
      assert.equal(cancelled.status, 202, `notifications/cancelled POST got HTTP ${cancelled.status}`);
      const callPost = main.seen.http.find(
        (h) => h.body?.method === "tools/call" && h.body?.params?.arguments?.steps === 20,
      );
      assert.equal(cancelled.body.params.requestId, callPost.body.id, "cancelled names another request");
      // The session is still usable after the cancellation.
      const echo = await main.client.callTool({ name: "echo", arguments: { message: "after cancel" } });
      assert.equal(text(echo), "Echo: after cancel");
    }));

  test("list_changed: notifications/resources/list_changed arrives on the GET stream through mcplb", () =>
    withLogs(async () => {
      // The GET stream is open once the server's roots/list request (sent on it) got through.
      await waitFor(() => main.seen.roots >= 1, 5000, "the GET stream (roots/list)");
      const before = main.seen.notifications.length;
      const data = `data:text/plain;base64,${Buffer.from("hello from mcplb tests\n".repeat(20)).toString("base64")}`;
      const result = await main.client.callTool({
        name: "gzip-file-as-resource",
        arguments: { name: "mcplb.txt.gz", data, outputType: "resourceLink" },
      });
      assert.equal(result.content[0].type, "resource_link", JSON.stringify(result));
      await waitFor(
        () =>
          main.seen.notifications
            .slice(before)
            .find((n) => n.method === "notifications/resources/list_changed"),
        5000,
        "notifications/resources/list_changed",
      );
      const { resources } = await main.client.listResources();
      assert.ok(resources.some((r) => r.uri === "demo://resource/session/mcplb.txt.gz"), "new resource not listed");
      const read = await main.client.readResource({ uri: "demo://resource/session/mcplb.txt.gz" });
      assert.ok(read.contents[0].blob, "session resource has no blob");
    }));

  test("subscriptions: resources/subscribe, then notifications/resources/updated through mcplb", () =>
    withLogs(async () => {
      await main.client.setLoggingLevel("debug");
      const uri = "demo://resource/dynamic/text/1";
      const before = main.seen.notifications.length;
      await main.client.subscribeResource({ uri });
      const on = await main.client.callTool({ name: "toggle-subscriber-updates", arguments: {} });
      assert.match(text(on), /Started simulated resource updated notifications/);
      try {
        await waitFor(
          () =>
            main.seen.notifications
              .slice(before)
              .find((n) => n.method === "notifications/resources/updated" && n.params.uri === uri),
          5000,
          "notifications/resources/updated",
        );
      } finally {
        await main.client.callTool({ name: "toggle-subscriber-updates", arguments: {} });
        await main.client.unsubscribeResource({ uri });
      }
      assert.ok(
        main.seen.notifications.slice(before).some((n) => n.method === "notifications/message"),
        "no logging notification for the subscribe",
      );
    }));

  test("tools/list_changed", { skip: "server-everything emits tools/list_changed only while the session initializes, before any client has a GET stream open, so no client can receive it (direct or through a proxy); resources/list_changed is checked instead" }, () => {});

  test("several sessions at once: each sticks to its backend for sampling answers", (t) =>
    withLogs(async () => {
      for (let i = 0; i < 5; i++) extraClients.push(await connectClient(lb.url, `client-${i}`));
      const results = await Promise.all(
        extraClients.map((c) =>
          c.client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "concurrent", maxTokens: 5 } }),
        ),
      );
      results.forEach((r, i) => assert.match(text(r), new RegExp(`sampled by client-${i}`)));
      // Which backend holds each client session: server-everything's get-env tool shows the
      // MCPLB_TEST_BACKEND tag each backend was started with. (Counting "Session initialized"
      // lines would also count mcplb's own health-check sessions.)
      const where = [];
      for (const c of [main, ...extraClients]) {
        const env = JSON.parse(text(await c.client.callTool({ name: "get-env", arguments: {} })));
        where.push(env.MCPLB_TEST_BACKEND);
      }
      t.diagnostic(`client sessions per backend: ${where.join(", ")}`);
      assert.ok(
        where.includes("backend-0") && where.includes("backend-1"),
        `mcplb put all ${where.length} client sessions on one backend (${where}), so stickiness was not really tested`,
      );
    }));

  test("DELETE ends the session through mcplb; the old session id is then refused like the backend does", () =>
    withLogs(async () => {
      const c = extraClients.pop() ?? (await connectClient(lb.url, "deleter"));
      const sid = c.transport.sessionId;
      await c.transport.terminateSession();
      const del = c.seen.http.find((h) => h.method === "DELETE");
      assert.equal(del?.status, 200, `DELETE got ${del?.status}`);
      const ping = (url, sessionId) =>
        fetch(url, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            accept: "application/json, text/event-stream",
            "mcp-session-id": sessionId,
            "mcp-protocol-version": "2025-11-25",
          },
          body: JSON.stringify({ jsonrpc: "2.0", id: 99, method: "ping" }),
        }).then(async (r) => {
          await r.body?.cancel();
          return r.status;
        });
      // server-everything answers an unknown session with 400 (the spec says 404); mcplb must
      // pass on what the backend said.
      const direct = await ping(backends[0].url, "00000000-0000-0000-0000-000000000000");
      const via = await ping(lb.url, sid);
      assert.ok([400, 404].includes(direct), `backend answered ${direct}`);
      assert.equal(via, direct, `request on a deleted session: mcplb ${via}, backend directly ${direct}`);
      await c.client.close();
    }));
});
