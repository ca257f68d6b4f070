// Virtual servers (a group with `members`) with the TypeScript SDK client and the conformance
// suite:
//   - three real members: a Python SDK MCPServer (tests/py/mcp_server.py), server-everything
//     over Streamable HTTP, and a stdio server (tests/py/stdio_server.py) that mcplb starts;
//     merged lists with prefixes, filters and renames, calls routed, progress streamed, a
//     member's sampling and elicitation requests answered by the client, a member killed
//     mid-session left out (fail-open) while the others work, and back when it is.
//   - the conformance suite through a virtual server whose only member is server-everything
//     (and the conformance target server), compared check by check with the server directly.
//     Summaries go to tests/ts/results/conformance-virtual.txt.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema, ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

import {
  REPO,
  TS_DIR,
  compareConformance,
  conformanceSection,
  countChecks,
  freePort,
  runConformance,
  startConformanceServer,
  startEverything,
  startMcplbWithConfig,
} from "./harness.mjs";
import { text } from "./sdk-client.mjs";
import { spawn } from "node:child_process";
import net from "node:net";

const PYTHON = existsSync(path.join(REPO, ".venv", "bin", "python")) ? path.join(REPO, ".venv", "bin", "python") : "python3";

/** tests/py/mcp_server.py on `port` (a free one when not given), ready when it accepts connections. */
async function startPyServer(name, port) {
  port ??= await freePort();
  const proc = spawn(PYTHON, [path.join(REPO, "tests", "py", "mcp_server.py"), "--port", String(port), "--name", name], {
    cwd: REPO,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  proc.stderr.on("data", (d) => (err = (err + d).slice(-4000)));
  const deadline = Date.now() + 30_000;
  for (;;) {
    const open = await new Promise((resolve) => {
      const s = net.connect({ host: "127.0.0.1", port });
      s.once("connect", () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (open) break;
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`mcp_server.py did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    url: `http://127.0.0.1:${port}/mcp`,
    tail: () => err,
    stop: async () => {
      if (proc.exitCode === null) {
        proc.kill("SIGTERM");
        await new Promise((r) => proc.once("exit", r));
      }
    },
  };
}

describe("a virtual server over three real members, with the TypeScript SDK client", () => {
  let py;
  let everything;
  let lb;
  let client;
  const seen = { sampling: [], elicitation: [] };

  before(async () => {
    py = await startPyServer("py-ts");
    everything = await startEverything("virtual-member");
    const stdio = JSON.stringify([PYTHON, path.join(REPO, "tests", "py", "stdio_server.py")]);
    lb = await startMcplbWithConfig(
      [
        "[proxy]",
        'listen = "127.0.0.1:0"',
        "workers = 2",
        "",
        "[[servers]]",
        'name = "py"',
        'path = "/py"',
        `backends = [${JSON.stringify(py.url)}]`,
        "[servers.health]",
        'interval = "300ms"',
        'timeout = "1s"',
        "healthy_threshold = 1",
        "unhealthy_threshold = 1",
        "",
        "[[servers]]",
        'name = "every"',
        'path = "/every"',
        `backends = [${JSON.stringify(everything.url)}]`,
        "",
        "[[servers]]",
        'name = "local"',
        'path = "/local"',
        `backends = [{ command = ${stdio} }]`,
        "",
        "[[servers]]",
        'name = "work"',
        'path = "/mcp"',
        "members = [",
        '  { server = "py", tools = ["add", "whoami", "slow_progress"] },',
        '  { server = "every", prefix = "ev", deny_tools = ["get-env", "gzip-*"] },',
        '  { server = "local", prefix = "sh", tools = ["echo", "pid"], rename = { echo = "say" } },',
        "]",
        "",
      ].join("\n"),
      { label: "mcplb-virtual" },
    );
    client = new Client(
      { name: "virtual-ts", version: "1.0.0" },
      { capabilities: { sampling: {}, elicitation: { form: {} } } },
    );
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
      seen.sampling.push(req.params);
      return { role: "assistant", content: { type: "text", text: "sampled by virtual-ts" }, model: "m", stopReason: "endTurn" };
    });
    client.setRequestHandler(ElicitRequestSchema, async (req) => {
      seen.elicitation.push(req.params);
      return { action: "accept", content: { name: "Ada Lovelace", check: true, integer: 7 } };
    });
    await client.connect(new StreamableHTTPClientTransport(new URL(lb.url)));
  });

  after(async () => {
    try {
      await client?.close();
    } catch {
      /* ignore */
    }
    await lb?.stop();
    await everything?.stop();
    await py?.stop();
  });

  async function withLogs(fn) {
    try {
      return await fn();
    } catch (e) {
      e.message += `\n--- mcplb ---\n${lb?.tail(40)}\n--- py ---\n${py?.tail()}`;
      throw e;
    }
  }

  test("lists are merged with prefixes, filters and renames", () =>
    withLogs(async () => {
      assert.equal(client.getServerVersion().name, "work");
      const names = (await client.listTools()).tools.map((t) => t.name);
      for (const n of ["py_add", "py_whoami", "ev_echo", "ev_get-sum", "ev_trigger-sampling-request", "sh_say", "sh_pid"]) {
        assert.ok(names.includes(n), `${n} missing from ${names.join(", ")}`);
      }
      for (const n of ["ev_get-env", "ev_gzip-file-as-resource", "sh_echo", "sh_crash", "add", "echo"]) {
        assert.ok(!names.includes(n), `${n} should be hidden: ${names.join(", ")}`);
      }
      const prompts = (await client.listPrompts()).prompts.map((p) => p.name);
      assert.ok(prompts.includes("py_greet") && prompts.includes("ev_simple-prompt"), prompts.join(", "));
      const uris = (await client.listResources()).resources.map((r) => r.uri);
      assert.ok(uris.includes("info://name"), uris.join(", "));
    }));

  test("calls, prompts and resources reach the right member", () =>
    withLogs(async () => {
      assert.equal(text(await client.callTool({ name: "py_add", arguments: { a: 2, b: 40 } })), "42");
      assert.equal(text(await client.callTool({ name: "ev_echo", arguments: { message: "hi" } })), "Echo: hi");
      assert.equal(text(await client.callTool({ name: "sh_say", arguments: { text: "hello" } })), "hello");
      const greet = await client.getPrompt({ name: "py_greet", arguments: { who: "ts" } });
      assert.match(greet.messages[0].content.text, /Hello ts, this is py-ts\./);
      const simple = await client.getPrompt({ name: "ev_simple-prompt" });
      assert.equal(simple.messages[0].content.text, "This is a simple prompt without arguments.");
      assert.equal((await client.readResource({ uri: "info://name" })).contents[0].text, "py-ts");
      const dyn = await client.readResource({ uri: "demo://resource/dynamic/text/7" });
      assert.equal(dyn.contents[0].uri, "demo://resource/dynamic/text/7");
      await assert.rejects(client.callTool({ name: "ev_get-env", arguments: {} }), /Unknown tool: ev_get-env/);
    }));

  test("progress streams through before the result", () =>
    withLogs(async () => {
      const events = [];
      const started = Date.now();
      const result = await client.callTool(
        { name: "ev_trigger-long-running-operation", arguments: { duration: 2, steps: 4 } },
        undefined,
        { onprogress: (p) => events.push({ ...p, at: Date.now() - started }) },
      );
      const resultAt = Date.now() - started;
      assert.match(text(result), /Long running operation completed/);
      assert.deepEqual(
        events.map((e) => e.progress),
        [1, 2, 3, 4],
      );
      assert.ok(events[0].at < resultAt - 1000, `first progress at ${events[0].at} ms, result at ${resultAt} ms`);
    }));

  test("a member's sampling and elicitation requests are answered by the client", () =>
    withLogs(async () => {
      const sampled = await client.callTool({ name: "ev_trigger-sampling-request", arguments: { prompt: "say hi", maxTokens: 20 } });
      assert.equal(seen.sampling.length, 1);
      assert.match(text(sampled), /sampled by virtual-ts/);
      const elicited = await client.callTool({ name: "ev_trigger-elicitation-request", arguments: {} });
      assert.equal(seen.elicitation.length, 1);
      assert.match(text(elicited), /Ada Lovelace/);
    }));

  // Last: it stops and restarts the py member.
  test("a member killed mid-session is left out while the others work, and comes back", () =>
    withLogs(async () => {
      const names = async () => (await client.listTools()).tools.map((t) => t.name);
      const until = async (want, ms, what) => {
        const deadline = Date.now() + ms;
        let shown;
        while (!want((shown = await names()))) {
          assert.ok(Date.now() < deadline, `timed out waiting for ${what}: ${shown.join(", ")}`);
          await new Promise((r) => setTimeout(r, 200));
        }
        return shown;
      };
      assert.ok((await names()).includes("py_whoami"));
      await py.stop();
      // Fail-open (the default): left out once found down, the others go on in the same session.
      const shown = await until((n) => !n.includes("py_whoami"), 10_000, "the killed member's tools to leave");
      assert.ok(shown.includes("ev_echo") && shown.includes("sh_say"), shown.join(", "));
      assert.equal(text(await client.callTool({ name: "sh_say", arguments: { text: "still here" } })), "still here");
      assert.equal(text(await client.callTool({ name: "ev_echo", arguments: { message: "on" } })), "Echo: on");
      // Back on the same port: its tools return once its health check passes, in the same session.
      py = await startPyServer("py-ts", py.port);
      await until((n) => n.includes("py_whoami"), 20_000, "the member's tools to come back");
      assert.equal(text(await client.callTool({ name: "py_whoami", arguments: {} })), "py-ts");
    }));
});

describe("the conformance suite through a virtual server with one member: as much as directly", () => {
  const runs = {};
  const procs = [];

  before(async () => {
    for (const [target, start] of [
      ["server-everything", startEverything],
      ["conformance-server", startConformanceServer],
    ]) {
      const backend = await start();
      procs.push(backend);
      const lb = await startMcplbWithConfig(
        [
          "[proxy]",
          'listen = "127.0.0.1:0"',
          "workers = 2",
          "",
          "[[servers]]",
          `name = "${target}"`,
          'path = "/direct"',
          `backends = [${JSON.stringify(backend.url)}]`,
          "",
          "[[servers]]",
          'name = "virtual"',
          'path = "/mcp"',
          'prefix_mode = "never"',
          `members = [{ server = "${target}" }]`,
          "",
        ].join("\n"),
        { label: `mcplb-virtual-${target}` },
      );
      procs.push(lb);
      const direct = await runConformance(backend.url, `${target}-direct`);
      const via = await runConformance(lb.url, `${target}-virtual`);
      runs[target] = { direct, via, lb };
    }
    mkdirSync(path.join(TS_DIR, "results"), { recursive: true });
    writeFileSync(
      path.join(TS_DIR, "results", "conformance-virtual.txt"),
      "# conformance server scenarios through a virtual server with one member (prefix_mode = \"never\")\n\n" +
        "Generated by tests/ts/test/virtual.test.mjs (./scripts/test.sh).\n\n" +
        Object.entries(runs)
          .map(([t, r]) => `${conformanceSection(`${t}, directly`, r.direct)}\n\n${conformanceSection(`${t}, through a virtual server`, r.via)}`)
          .join("\n\n") +
        "\n",
    );
  });

  after(async () => {
    for (const p of procs.reverse()) await p.stop();
  });

  for (const target of ["server-everything", "conformance-server"]) {
    test(`${target}: every check that passes directly also passes through the virtual server`, (t) => {
      const { direct, via, lb } = runs[target];
      // Every check, those a server passes only by answering a call to a tool it does not
      // list with its own `isError` result included (server-everything lacks the suite's
      // test_* tools): with `prefix_mode = "never"` and one member, a tool name no member lists
      // goes to that member, whose own answer reaches the client.
      const { lost, changed, gained } = compareConformance(direct, via);
      t.diagnostic(
        [
          `${target}: direct ${countChecks(direct, "SUCCESS")} passed / ${countChecks(direct, "FAILURE")} failed;` +
            ` virtual ${countChecks(via, "SUCCESS")} passed / ${countChecks(via, "FAILURE")} failed`,
          ...changed.map((c) => `  changed: ${c.direct.key}: ${c.direct.status} -> ${c.via.status} ${c.via.errorMessage ?? ""}`),
          ...gained.map((c) => `  only virtual: ${c.key}: ${c.status} ${c.errorMessage ?? ""}`),
        ].join("\n"),
      );
      if (lost.length > 0) {
        const detail = lost
          .map(
            ({ direct: d, via: v }) =>
              `  LOST ${d.key}: via ${v?.status ?? "(missing)"}: ${v?.errorMessage ?? ""}\n    details: ${JSON.stringify(v?.details ?? {}).slice(0, 800)}`,
          )
          .join("\n");
        assert.fail(`the virtual server lost ${lost.length} check(s) for ${target}:\n${detail}\n--- mcplb ---\n${lb.tail(30)}`);
      }
    });
  }
});
