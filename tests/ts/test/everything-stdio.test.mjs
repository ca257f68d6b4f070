// @modelcontextprotocol/server-everything as a STDIO backend that mcplb starts and supervises
// (`backends = [{ command = [node, dist/index.js, "stdio"], mode = ... }]`), driven by the
// official TypeScript SDK client (Client + StreamableHTTPClientTransport) through mcplb.
//
// - mode = "per-session": each MCP session gets its own child process (from a pre-started pool);
//   two sessions are independent (a session resource made in one is not seen by the other),
//   DELETE stops that session's process.
// - mode = "shared": one process serves every session; mcplb rewrites JSON-RPC ids and progress
//   tokens and restores them (with their JSON type), so two sessions sending the same ids at
//   the same time each get their own answers and progress. Sessions whose clients accept
//   sampling/elicitation/roots take turns on the process, so a sampling request reaches the
//   client whose call made it; sessions that accept none run together.
// Both end by stopping mcplb by PID (SIGTERM) and checking that the server-everything children it
// started are gone.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  EVERYTHING_JS,
  childProcesses,
  procInfo,
  startMcplbWithConfig,
  waitFor,
} from "./harness.mjs";
import {
  assertProgressStreams,
  assertSamplingRoundTrip,
  closeClients,
  connectClient as connectSdkClient,
  progressCall,
  text,
  withLogsOf,
} from "./sdk-client.mjs";

const ROOT = { uri: "file:///tmp/mcplb-ts-stdio-root", name: "mcplb stdio test root" };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function stdioConfig(name, mode, extra = "") {
  const command = [process.execPath, EVERYTHING_JS, "stdio"].map((s) => JSON.stringify(s)).join(", ");
  return [
    "[proxy]",
    'listen = "127.0.0.1:0"',
    "workers = 2",
    "",
    "[[servers]]",
    `name = "${name}"`,
    'path = "/mcp"',
    `backends = [{ command = [${command}], mode = "${mode}"${extra} }]`,
    "[servers.health]",
    "enabled = false",
    "",
  ].join("\n");
}

/** The server-everything stdio children of mcplb (zombies left out). */
function everythingChildren(lb) {
  return childProcesses(lb.proc.pid).filter(
    (p) => p.state !== "Z" && p.cmdline.includes(EVERYTHING_JS) && p.cmdline.endsWith(" stdio"),
  );
}

/**
 * A client with sampling, elicitation and roots (answers name the client), or with `plain`
 * none of them.
 */
const connectClient = (url, name, { plain = false } = {}) => connectSdkClient(url, name, { plain, root: ROOT });

/** One JSON-RPC POST on an existing session, bypassing the SDK (to choose the id); JSON or SSE answer. */
async function rawPost(url, c, body) {
  const res = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      "mcp-session-id": c.transport.sessionId,
      "mcp-protocol-version": c.transport.protocolVersion ?? "2025-06-18",
    },
    body: JSON.stringify(body),
  });
  const raw = await res.text();
  let messages;
  if ((res.headers.get("content-type") ?? "").includes("text/event-stream")) {
    messages = raw
      .split(/\r?\n\r?\n/)
      .map((ev) =>
        ev
          .split(/\r?\n/)
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n"),
      )
      .filter(Boolean)
      .map((d) => JSON.parse(d));
  } else {
    messages = raw ? [JSON.parse(raw)] : [];
  }
  const answer = messages.find((m) => m.method === undefined && ("result" in m || "error" in m));
  return { status: res.status, answer, raw };
}

/** Shared body of both modes' shutdown test: SIGTERM mcplb, its stdio children must be gone. */
async function stopAndCheckChildren(t, lb, clients, { exitTodo } = {}) {
  // DELETE each session before closing the client: a client that only closes leaves its GET
  // stream open in mcplb until the next keepalive write fails, and SIGTERM then waits for it
  // (up to proxy.shutdown_timeout, 30 s).
  for (const c of clients) {
    try {
      await c.transport.terminateSession();
      await c.client.close();
    } catch {
      /* ignore */
    }
  }
  const children = everythingChildren(lb);
  assert.ok(children.length >= 1, "mcplb has no server-everything child before the stop");
  t.diagnostic(`server-everything children before stop: ${children.map((p) => p.pid).join(", ")}`);
  const started = Date.now();
  await lb.stop(10_000);
  t.diagnostic(`mcplb exited ${JSON.stringify(lb.exited)} in ${Date.now() - started} ms`);
  const exitedZero = () =>
    assert.equal(lb.exited?.code, 0, `mcplb did not exit 0 within 10 s of SIGTERM: ${JSON.stringify(lb.exited)}`);
  if (exitTodo) await t.test("mcplb exits 0 within 10 s of SIGTERM", { todo: exitTodo }, exitedZero);
  else exitedZero();
  const alive = () =>
    children.filter((p) => {
      const now = procInfo(p.pid);
      return now && now.state !== "Z" && now.cmdline === p.cmdline;
    });
  try {
    await waitFor(() => alive().length === 0, 5000, "the stdio children to exit");
  } catch (e) {
    e.message += `: still alive ${JSON.stringify(alive())}`;
    throw e;
  }
  // Nothing re-parented either: no server-everything stdio process of this run anywhere.
  const { readdirSync } = await import("node:fs");
  const stray = readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .map((n) => procInfo(Number(n)))
    .filter((p) => p && p.state !== "Z" && p.cmdline === children[0].cmdline);
  assert.deepEqual(stray, [], "server-everything stdio processes outlived mcplb");
}

describe("server-everything over STDIO, mode = per-session, through mcplb with the TypeScript SDK client", () => {
  let lb;
  let main;
  const clients = [];

  before(async () => {
    lb = await startMcplbWithConfig(stdioConfig("everything-stdio", "per-session", ", min = 1, max = 8"), {
      label: "mcplb(per-session)",
    });
    main = await connectClient(lb.url, "main");
    clients.push(main);
  });

  after(async () => {
    await closeClients(clients);
    await lb?.stop();
  });

  const withLogs = withLogsOf(() => [["mcplb output", lb, 60]]);

  test("initialize: server info, capabilities, a session id; a child process serves it", () =>
    withLogs(async () => {
      const info = main.client.getServerVersion();
      assert.equal(info.name, "mcp-servers/everything");
      const caps = main.client.getServerCapabilities();
      assert.ok(caps.tools && caps.resources && caps.prompts, JSON.stringify(caps));
      assert.ok(main.transport.sessionId, "mcplb must hand the client a session id");
      const kids = everythingChildren(lb);
      assert.ok(kids.length >= 1, "no server-everything child of mcplb");
    }));

  test("tools: list, call echo and get-sum", () =>
    withLogs(async () => {
      const { tools } = await main.client.listTools();
      const names = tools.map((t) => t.name);
      for (const n of ["echo", "get-sum", "trigger-long-running-operation", "trigger-sampling-request"]) {
        assert.ok(names.includes(n), `tool ${n} missing from ${names.join(", ")}`);
      }
      const echo = await main.client.callTool({ name: "echo", arguments: { message: "hello over stdio" } });
      assert.equal(text(echo), "Echo: hello over stdio");
      const sum = await main.client.callTool({ name: "get-sum", arguments: { a: 2, b: 40 } });
      assert.equal(text(sum), "The sum of 2 and 40 is 42.");
    }));

  test("progress: notifications stream in before the result", () => withLogs(() => assertProgressStreams(main)));

  test("sampling: server -> client request over stdio, the client's answer gets back to the child", () =>
    withLogs(() => assertSamplingRoundTrip(main)));

  test("elicitation and roots: server -> client requests over stdio", () =>
    withLogs(async () => {
      const el = await main.client.callTool({ name: "trigger-elicitation-request", arguments: {} });
      assert.equal(main.seen.elicitation.length, 1);
      assert.match(text(el), /- Name: Ada via main/);
      const roots = await main.client.callTool({ name: "get-roots-list", arguments: {} });
      assert.ok(main.seen.roots >= 1, "the server never asked the client for roots");
      assert.match(text(roots), /mcplb stdio test root/);
    }));

  test("resources: list, read a static and a templated resource", () =>
    withLogs(async () => {
      const { resources } = await main.client.listResources();
      assert.ok(resources.length > 0, "no resources listed");
      const read = await main.client.readResource({ uri: resources[0].uri });
      assert.equal(read.contents[0].uri, resources[0].uri);
      assert.ok(read.contents[0].text !== undefined || read.contents[0].blob !== undefined);
      const dyn = await main.client.readResource({ uri: "demo://resource/dynamic/text/7" });
      assert.equal(dyn.contents[0].uri, "demo://resource/dynamic/text/7");
      assert.ok(dyn.contents[0].text, "templated resource has no text");
    }));

  test("prompts: get simple-prompt and args-prompt", () =>
    withLogs(async () => {
      const simple = await main.client.getPrompt({ name: "simple-prompt" });
      assert.equal(simple.messages[0].content.text, "This is a simple prompt without arguments.");
      const args = await main.client.getPrompt({ name: "args-prompt", arguments: { city: "Lyon", state: "ARA" } });
      assert.equal(args.messages[0].content.text, "What's weather in Lyon, ARA?");
    }));

  test("two concurrent sessions: own processes, own state, own sampling answers and progress", (t) =>
    withLogs(async () => {
      const [a, b] = await Promise.all([connectClient(lb.url, "session-a"), connectClient(lb.url, "session-b")]);
      clients.push(a, b);
      assert.notEqual(a.transport.sessionId, b.transport.sessionId);
      const kids = everythingChildren(lb);
      t.diagnostic(`server-everything children with 3 sessions open: ${kids.length}`);
      assert.ok(kids.length >= 3 && kids.length <= 8, `${kids.length} children for 3 sessions (min 1, max 8)`);

      // Concurrently: a sampling round trip, a progress call and a session resource per session.
      const gz = (who) =>
        `data:text/plain;base64,${Buffer.from(`made by ${who}\n`.repeat(10)).toString("base64")}`;
      const work = (c, steps) =>
        Promise.all([
          c.client.callTool({ name: "trigger-sampling-request", arguments: { prompt: c.name, maxTokens: 5 } }),
          progressCall(c, { duration: steps * 0.25, steps }),
          c.client.callTool({
            name: "gzip-file-as-resource",
            arguments: { name: `${c.name}.txt.gz`, data: gz(c.name), outputType: "resourceLink" },
          }),
        ]);
      const [[sa, pa, ga], [sb, pb, gb]] = await Promise.all([work(a, 2), work(b, 4)]);
      assert.match(text(sa), /sampled by session-a/);
      assert.match(text(sb), /sampled by session-b/);
      assert.equal(a.seen.sampling.length, 1);
      assert.equal(b.seen.sampling.length, 1);
      assert.deepEqual(pa.events.map((e) => e.total), [2, 2]);
      assert.deepEqual(pb.events.map((e) => e.total), [4, 4, 4, 4]);
      assert.match(text(pa.result), /Steps: 2\./);
      assert.match(text(pb.result), /Steps: 4\./);
      assert.equal(ga.content[0].type, "resource_link", JSON.stringify(ga));
      assert.equal(gb.content[0].type, "resource_link", JSON.stringify(gb));

      // Each session's process has only its own session resource.
      const sessionUris = async (c) =>
        (await c.client.listResources()).resources.map((r) => r.uri).filter((u) => u.startsWith("demo://resource/session/"));
      assert.deepEqual(await sessionUris(a), ["demo://resource/session/session-a.txt.gz"]);
      assert.deepEqual(await sessionUris(b), ["demo://resource/session/session-b.txt.gz"]);
      assert.deepEqual(await sessionUris(main), []);
    }));

  test("DELETE ends a session and stops its process; the old session id then gets 404", (t) =>
    withLogs(async () => {
      const b = clients.find((c) => c.name === "session-b");
      const sid = b.transport.sessionId;
      const beforePids = everythingChildren(lb).map((p) => p.pid);
      await b.transport.terminateSession();
      const del = b.seen.http.find((h) => h.method === "DELETE");
      assert.equal(del?.status, 200, `DELETE got ${del?.status}`);
      const now = () => new Set(everythingChildren(lb).map((p) => p.pid));
      const gone = await waitFor(
        () => {
          const live = now();
          const g = beforePids.filter((p) => !live.has(p));
          return g.length ? g : null;
        },
        5000,
        "the deleted session's process to exit",
      );
      t.diagnostic(`process(es) stopped after DELETE: ${gone.join(", ")}`);
      assert.equal(gone.length, 1, `DELETE of one session stopped ${gone.length} processes`);
      const res = await fetch(lb.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
          "mcp-session-id": sid,
          "mcp-protocol-version": b.transport.protocolVersion ?? "2025-06-18",
        },
        body: JSON.stringify({ jsonrpc: "2.0", id: 99, method: "ping" }),
      });
      await res.body?.cancel();
      assert.equal(res.status, 404, `request on a deleted session got ${res.status}`);
      // The other sessions are untouched.
      const a = clients.find((c) => c.name === "session-a");
      assert.equal(text(await a.client.callTool({ name: "echo", arguments: { message: "still here" } })), "Echo: still here");
      clients.splice(clients.indexOf(b), 1);
      await b.client.close();
    }));

  test("stopping mcplb (SIGTERM) stops every stdio child it started", (t) =>
    withLogs(() => stopAndCheckChildren(t, lb, clients.splice(0))));
});

describe("server-everything over STDIO, mode = shared (one process, ids rewritten), through mcplb", () => {
  let lb;
  // a, b accept sampling/elicitation/roots (they take turns on the process); plainA, plainB accept
  // none (their calls run together).
  let a;
  let b;
  let plainA;
  let plainB;
  const clients = [];

  before(async () => {
    lb = await startMcplbWithConfig(stdioConfig("everything-stdio-shared", "shared"), { label: "mcplb(shared)" });
    a = await connectClient(lb.url, "shared-a");
    b = await connectClient(lb.url, "shared-b");
    [plainA, plainB] = await Promise.all([
      connectClient(lb.url, "plain-a", { plain: true }),
      connectClient(lb.url, "plain-b", { plain: true }),
    ]);
    clients.push(a, b, plainA, plainB);
  });

  after(async () => {
    await closeClients(clients);
    await lb?.stop();
  });

  const withLogs = withLogsOf(() => [["mcplb output", lb, 60]]);

  test("initialize twice: both sessions served by one process, same server info", () =>
    withLogs(async () => {
      assert.ok(a.transport.sessionId && b.transport.sessionId);
      assert.notEqual(a.transport.sessionId, b.transport.sessionId);
      for (const c of [a, b]) assert.equal(c.client.getServerVersion().name, "mcp-servers/everything");
      const kids = everythingChildren(lb);
      assert.equal(kids.length, 1, `shared mode runs ${kids.length} processes: ${JSON.stringify(kids)}`);
      const [la, lbTools] = await Promise.all([a.client.listTools(), b.client.listTools()]);
      assert.deepEqual(
        la.tools.map((t) => t.name).sort(),
        lbTools.tools.map((t) => t.name).sort(),
      );
      const [sa, sb] = await Promise.all([
        a.client.callTool({ name: "get-sum", arguments: { a: 1, b: 2 } }),
        b.client.callTool({ name: "get-sum", arguments: { a: 20, b: 22 } }),
      ]);
      assert.equal(text(sa), "The sum of 1 and 2 is 3.");
      assert.equal(text(sb), "The sum of 20 and 22 is 42.");
    }));

  test("same request ids and progress tokens from two sessions at once: each gets its own answers", () =>
    withLogs(async () => {
      // Plain sessions, so that their calls are in flight together.
      const [a, b] = [plainA, plainB];
      // The two SDK clients have sent the same number of requests, so they number these alike
      // (and the SDK uses the request id as the progress token).
      const [pa, pb] = await Promise.all([
        progressCall(a, { duration: 1, steps: 2 }),
        progressCall(b, { duration: 2, steps: 4 }),
      ]);
      const idOf = (c) =>
        c.seen.http.filter((h) => h.body?.params?.name === "trigger-long-running-operation").at(-1).body.id;
      assert.equal(idOf(a), idOf(b), "the two clients did not use the same request id; the test proves nothing");
      assert.match(text(pa.result), /Duration: 1 seconds, Steps: 2\./);
      assert.match(text(pb.result), /Duration: 2 seconds, Steps: 4\./);
      assert.deepEqual(
        pa.events.map((e) => [e.progress, e.total]),
        [
          [1, 2],
          [2, 2],
        ],
      );
      assert.deepEqual(
        pb.events.map((e) => [e.progress, e.total]),
        [
          [1, 4],
          [2, 4],
          [3, 4],
          [4, 4],
        ],
      );
      assert.ok(pb.events[0].at < pb.resultAt - 1000, "progress was buffered until the result");

      // Bursts of echo calls, same ids on both sides, all in flight together.
      const burst = (c) =>
        Promise.all(
          Array.from({ length: 8 }, (_, i) =>
            c.client.callTool({ name: "echo", arguments: { message: `${c.name} #${i}` } }),
          ),
        );
      const [ra, rb] = await Promise.all([burst(a), burst(b)]);
      ra.forEach((r, i) => assert.equal(text(r), `Echo: plain-a #${i}`));
      rb.forEach((r, i) => assert.equal(text(r), `Echo: plain-b #${i}`));
    }));

  test("cancellation with the same request id in both sessions: only the cancelling session's call stops", () =>
    withLogs(async () => {
      const [a, b] = [plainA, plainB];
      const ac = new AbortController();
      let aProgress = 0;
      const callA = a.client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 3, steps: 6 } },
        undefined,
        {
          signal: ac.signal,
          onprogress: () => {
            aProgress += 1;
            if (aProgress === 1) ac.abort("test cancels");
          },
        },
      );
      const callB = progressCall(b, { duration: 3, steps: 6 });
      const started = Date.now();
      await assert.rejects(callA);
      assert.ok(Date.now() - started < 2500, "plain-a's call was not cut short by its abort");
      const idOf = (c) =>
        c.seen.http.filter((h) => h.body?.params?.arguments?.steps === 6).at(-1).body.id;
      assert.equal(idOf(a), idOf(b), "the two clients did not use the same request id; the test proves nothing");
      const cancelled = await waitFor(
        () => a.seen.http.find((h) => h.body?.method === "notifications/cancelled" && h.status !== undefined),
        5000,
        "plain-a's notifications/cancelled POST",
      );
      assert.equal(cancelled.status, 202);
      const pb = await callB;
      assert.match(text(pb.result), /Duration: 3 seconds, Steps: 6\./);
      assert.equal(pb.events.length, 6, `plain-b got ${pb.events.length} progress notifications`);
      for (const c of [a, b]) {
        const echo = await c.client.callTool({ name: "echo", arguments: { message: `${c.name} after cancel` } });
        assert.equal(text(echo), `Echo: ${c.name} after cancel`);
      }
    }));

  test("raw ids: same number, number vs string, same string; each answer keeps its id and JSON type", () =>
    withLogs(async () => {
      const cases = [
        [a, 1000],
        [b, 1000],
        [a, "1000"],
        [b, "abc"],
        [a, "abc"],
        [b, 0],
      ];
      const answers = await Promise.all(
        cases.map(([c, id], i) =>
          rawPost(lb.url, c, {
            jsonrpc: "2.0",
            id,
            method: "tools/call",
            params: { name: "echo", arguments: { message: `raw ${c.name} ${i}` } },
          }),
        ),
      );
      answers.forEach((r, i) => {
        const [c, id] = cases[i];
        assert.equal(r.status, 200, `case ${i}: HTTP ${r.status}: ${r.raw}`);
        assert.ok(r.answer, `case ${i}: no JSON-RPC answer in ${r.raw}`);
        assert.deepEqual(r.answer.id, id, `case ${i}: sent id ${JSON.stringify(id)}, got ${JSON.stringify(r.answer.id)}`);
        assert.equal(text(r.answer.result), `Echo: raw ${c.name} ${i}`, `case ${i}: ${r.raw}`);
      });
    }));

  test("sampling round trip in shared mode (one session at a time)", () =>
    withLogs(async () => {
      for (const c of [a, b]) {
        const before = c.seen.sampling.length;
        const r = await c.client.callTool({ name: "trigger-sampling-request", arguments: { prompt: c.name, maxTokens: 5 } });
        assert.match(text(r), new RegExp(`sampled by ${c.name}`));
        assert.equal(c.seen.sampling.length, before + 1);
      }
    }));

  // stdio messages do not say which call made a server request; mcplb makes the answer certain
  // instead: sessions that accept sampling take turns on the shared process (the second one's
  // call waits until the first has none in flight), so a sampling request belongs to the one
  // session with calls in flight. (Before that, it went to the session with the latest call
  // and reached the wrong client about 1 run in 3.)
  test("sampling from two sessions at once in shared mode: each tool call gets its own client's answer", () =>
    withLogs(async () => {
      const before = [a.seen.sampling.length, b.seen.sampling.length];
      const [ra, rb] = await Promise.all(
        [a, b].map((c) =>
          c.client.callTool({ name: "trigger-sampling-request", arguments: { prompt: `from ${c.name}`, maxTokens: 5 } }),
        ),
      );
      const asked = [a, b].map((c, i) => c.seen.sampling.slice(before[i]).map((s) => s.messages[0].content.text));
      const detail = `shared-a was asked ${JSON.stringify(asked[0])}, shared-b was asked ${JSON.stringify(asked[1])}`;
      assert.match(text(ra), /sampled by shared-a/, `shared-a's tool result: ${text(ra)}; ${detail}`);
      assert.match(text(rb), /sampled by shared-b/, `shared-b's tool result: ${text(rb)}; ${detail}`);
      assert.equal(asked[0].length, 1, detail);
      assert.equal(asked[1].length, 1, detail);
      assert.match(asked[0][0], /from shared-a/, detail);
      assert.match(asked[1][0], /from shared-b/, detail);
    }));

  test("a sampling request made by a plain session's call reaches no client (the child gets an error)", (t) =>
    withLogs(async () => {
      const before = [a, b].map((c) => c.seen.sampling.length);
      let outcome;
      try {
        outcome = text(
          await plainA.client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "from plain-a", maxTokens: 5 } }),
        );
      } catch (e) {
        outcome = `error: ${e.message}`;
      }
      t.diagnostic(`plain-a's call ended with: ${outcome}`);
      assert.doesNotMatch(outcome, /sampled by/, `plain-a's call got a client's sampling answer: ${outcome}`);
      assert.deepEqual(
        [a, b].map((c) => c.seen.sampling.length),
        before,
        "a client was asked to sample for plain-a's call",
      );
    }));

  test("resources/read and prompts/get in shared mode", () =>
    withLogs(async () => {
      const [ra, rb] = await Promise.all([
        a.client.readResource({ uri: "demo://resource/dynamic/text/1" }),
        b.client.readResource({ uri: "demo://resource/dynamic/text/2" }),
      ]);
      assert.equal(ra.contents[0].uri, "demo://resource/dynamic/text/1");
      assert.equal(rb.contents[0].uri, "demo://resource/dynamic/text/2");
      const p = await b.client.getPrompt({ name: "args-prompt", arguments: { city: "Nantes", state: "PDL" } });
      assert.equal(p.messages[0].content.text, "What's weather in Nantes, PDL?");
    }));

  // mcplb bug (todo until fixed): the request cancelled above is never answered by the child
  // (as the spec says), and the bridge keeps it in flight, so graceful shutdown waits the whole
  // proxy.shutdown_timeout (30 s) for it. Fixed: the bridge now ends a cancelled request's wait
  // with a -32800 error at once, so mcplb exits promptly. The children must be gone either way.
  test("stopping mcplb (SIGTERM) stops the shared stdio child", (t) =>
    withLogs(() =>
      stopAndCheckChildren(t, lb, clients.splice(0)),
    ));
});
