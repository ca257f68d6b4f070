#!/usr/bin/env node
// A Streamable HTTP MCP server that implements what the server scenarios of
// @modelcontextprotocol/conformance ask for (tool, resource and prompt names as given in each
// scenario's "Server Implementation Requirements", shown by `conformance list --server` and
// in the suite's scenario descriptions). The npm package of the suite ships no server, and
// @modelcontextprotocol/server-everything does not have these names, so the suite would fail
// most checks against it for reasons that have nothing to do with a proxy in between.
//
// Written for mcplb's tests with the official TypeScript SDK's low-level `Server` (so tool
// input schemas go out exactly as written, e.g. JSON Schema 2020-12 keywords).
//
// Usage: node conformance-server.mjs [--port N]   (or PORT=N); prints
//   "conformance server listening on port N" on stderr when ready.
// Sessions: one SDK transport per initialize, resumable (in-memory event store).
// DNS rebinding protection: requests whose Host or Origin is not localhost/127.0.0.1/[::1]
// get 403, as the 2025-11-25 spec asks of local servers.

import { randomUUID } from "node:crypto";
import http from "node:http";

import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  McpError,
  ErrorCode,
} from "@modelcontextprotocol/sdk/types.js";

// 1x1 PNG and a tiny silent WAV.
const PNG_1X1 =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV = (() => {
  const samples = 8; // 16-bit mono silence at 8 kHz
  const b = Buffer.alloc(44 + samples * 2);
  b.write("RIFF", 0);
  b.writeUInt32LE(36 + samples * 2, 4);
  b.write("WAVEfmt ", 8);
  b.writeUInt32LE(16, 16);
  b.writeUInt16LE(1, 20); // PCM
  b.writeUInt16LE(1, 22); // mono
  b.writeUInt32LE(8000, 24);
  b.writeUInt32LE(16000, 28);
  b.writeUInt16LE(2, 32);
  b.writeUInt16LE(16, 34);
  b.write("data", 36);
  b.writeUInt32LE(samples * 2, 40);
  return b.toString("base64");
})();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** In-memory event store with stream ids encoded in event ids, for resumability. */
class EventStore {
  constructor() {
    this.events = []; // { eventId, streamId, message }
  }
  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${this.events.length + 1}_${randomUUID().slice(0, 8)}`;
    this.events.push({ eventId, streamId, message });
    return eventId;
  }
  async getStreamIdForEventId(eventId) {
    return this.events.find((e) => e.eventId === eventId)?.streamId;
  }
  async replayEventsAfter(lastEventId, { send }) {
    const idx = this.events.findIndex((e) => e.eventId === lastEventId);
    if (idx < 0) return "";
    const { streamId } = this.events[idx];
    for (const e of this.events.slice(idx + 1)) {
      if (e.streamId === streamId && Object.keys(e.message).length > 0) await send(e.eventId, e.message);
    }
    return streamId;
  }
}

const TOOLS = [
  { name: "test_simple_text", description: "Returns simple text", inputSchema: { type: "object", properties: {} } },
  { name: "test_image_content", description: "Returns an image", inputSchema: { type: "object", properties: {} } },
  { name: "test_audio_content", description: "Returns audio", inputSchema: { type: "object", properties: {} } },
  {
    name: "test_embedded_resource",
    description: "Returns an embedded resource",
    inputSchema: { type: "object", properties: {} },
  },
  {
    name: "test_multiple_content_types",
    description: "Returns text, image and resource content",
    inputSchema: { type: "object", properties: {} },
  },
  {
    name: "test_tool_with_logging",
    description: "Sends three log notifications while running",
    inputSchema: { type: "object", properties: {} },
  },
  { name: "test_error_handling", description: "Always fails", inputSchema: { type: "object", properties: {} } },
  {
    name: "test_tool_with_progress",
    description: "Reports progress 0, 50, 100 of 100",
    inputSchema: { type: "object", properties: {} },
  },
  {
    name: "test_sampling",
    description: "Asks the client for LLM sampling",
    inputSchema: { type: "object", properties: { prompt: { type: "string" } }, required: ["prompt"] },
  },
  {
    name: "test_elicitation",
    description: "Asks the client for user input",
    inputSchema: { type: "object", properties: { message: { type: "string" } }, required: ["message"] },
  },
  {
    name: "test_elicitation_sep1034_defaults",
    description: "Elicitation with defaults for every primitive type",
    inputSchema: { type: "object", properties: {} },
  },
  {
    name: "test_elicitation_sep1330_enums",
    description: "Elicitation with every enum variant",
    inputSchema: { type: "object", properties: {} },
  },
  {
    name: "json_schema_2020_12_tool",
    description: "Tool with JSON Schema 2020-12 features",
    inputSchema: {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      type: "object",
      $defs: {
        address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } },
      },
      properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
      additionalProperties: false,
    },
  },
  {
    name: "test_reconnection",
    description: "Closes its SSE stream mid-call; the result arrives after the client resumes",
    inputSchema: { type: "object", properties: {} },
  },
];

const RESOURCES = [
  { uri: "test://static-text", name: "static-text", description: "A static text resource", mimeType: "text/plain" },
  { uri: "test://static-binary", name: "static-binary", description: "A static PNG", mimeType: "image/png" },
  { uri: "test://watched-resource", name: "watched-resource", description: "For subscriptions", mimeType: "text/plain" },
];

const PROMPTS = [
  { name: "test_simple_prompt", description: "A simple prompt" },
  {
    name: "test_prompt_with_arguments",
    description: "A prompt with arguments",
    arguments: [
      { name: "arg1", description: "First test argument", required: true },
      { name: "arg2", description: "Second test argument", required: true },
    ],
  },
  {
    name: "test_prompt_with_embedded_resource",
    description: "A prompt with an embedded resource",
    arguments: [{ name: "resourceUri", description: "URI of the resource to embed", required: true }],
  },
  { name: "test_prompt_with_image", description: "A prompt with an image" },
];

function createServer() {
  const server = new Server(
    { name: "mcplb-conformance-target", version: "1.0.0" },
    {
      capabilities: {
        tools: { listChanged: true },
        resources: { subscribe: true, listChanged: true },
        prompts: { listChanged: true },
        logging: {},
        completions: {},
      },
    },
  );
  const subscriptions = new Set();

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));

  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const args = req.params.arguments ?? {};
    const log = (data) => server.sendLoggingMessage({ level: "info", data }, extra.sessionId);
    switch (req.params.name) {
      case "test_simple_text":
        return { content: [{ type: "text", text: "This is a simple text response for testing." }] };
      case "test_image_content":
        return { content: [{ type: "image", data: PNG_1X1, mimeType: "image/png" }] };
      case "test_audio_content":
        return { content: [{ type: "audio", data: WAV, mimeType: "audio/wav" }] };
      case "test_embedded_resource":
        return {
          content: [
            {
              type: "resource",
              resource: {
                uri: "test://embedded-resource",
                mimeType: "text/plain",
                text: "This is an embedded resource content.",
              },
            },
          ],
        };
      case "test_multiple_content_types":
        return {
          content: [
            { type: "text", text: "Multiple content types test:" },
            { type: "image", data: PNG_1X1, mimeType: "image/png" },
            {
              type: "resource",
              resource: {
                uri: "test://mixed-content-resource",
                mimeType: "application/json",
                text: JSON.stringify({ test: "data", value: 123 }),
              },
            },
          ],
        };
      case "test_tool_with_logging": {
        // Related to the request, so the notifications travel on the call's own SSE stream.
        const send = (data) =>
          extra.sendNotification({ method: "notifications/message", params: { level: "info", data } });
        await send("Tool execution started");
        await sleep(50);
        await send("Tool processing data");
        await sleep(50);
        await send("Tool execution completed");
        return { content: [{ type: "text", text: "Tool with logging executed successfully" }] };
      }
      case "test_error_handling":
        return {
          isError: true,
          content: [{ type: "text", text: "This tool intentionally returns an error for testing" }],
        };
      case "test_tool_with_progress": {
        const token = req.params._meta?.progressToken;
        for (const [i, p] of [0, 50, 100].entries()) {
          if (i > 0) await sleep(50);
          if (token !== undefined) {
            await extra.sendNotification({
              method: "notifications/progress",
              params: { progressToken: token, progress: p, total: 100 },
            });
          }
        }
        return { content: [{ type: "text", text: "Tool with progress executed successfully" }] };
      }
      case "test_sampling": {
        const res = await extra.sendRequest(
          {
            method: "sampling/createMessage",
            params: { messages: [{ role: "user", content: { type: "text", text: String(args.prompt) } }], maxTokens: 100 },
          },
          CreateMessageResultSchema,
        );
        const text = res.content?.type === "text" ? res.content.text : JSON.stringify(res.content);
        return { content: [{ type: "text", text: `LLM response: ${text}` }] };
      }
      case "test_elicitation": {
        const res = await extra.sendRequest(
          {
            method: "elicitation/create",
            params: {
              message: String(args.message),
              requestedSchema: {
                type: "object",
                properties: {
                  username: { type: "string", description: "User's response" },
                  email: { type: "string", description: "User's email address" },
                },
                required: ["username", "email"],
              },
            },
          },
          ElicitResultSchema,
        );
        return { content: [{ type: "text", text: `User response: ${JSON.stringify(res)}` }] };
      }
      case "test_elicitation_sep1034_defaults": {
        const res = await extra.sendRequest(
          {
            method: "elicitation/create",
            params: {
              message: "Please review and update the form fields with defaults",
              requestedSchema: {
                type: "object",
                properties: {
                  name: { type: "string", description: "User name", default: "John Doe" },
                  age: { type: "integer", description: "User age", default: 30 },
                  score: { type: "number", description: "User score", default: 95.5 },
                  status: {
                    type: "string",
                    description: "User status",
                    enum: ["active", "inactive", "pending"],
                    default: "active",
                  },
                  verified: { type: "boolean", description: "Verification status", default: true },
                },
                required: [],
              },
            },
          },
          ElicitResultSchema,
        );
        return {
          content: [
            { type: "text", text: `Elicitation completed: action=${res.action}, content=${JSON.stringify(res.content ?? {})}` },
          ],
        };
      }
      case "test_elicitation_sep1330_enums": {
        const res = await extra.sendRequest(
          {
            method: "elicitation/create",
            params: {
              message: "Please select options from the enum fields",
              requestedSchema: {
                type: "object",
                properties: {
                  untitledSingle: { type: "string", description: "Untitled single", enum: ["option1", "option2", "option3"] },
                  titledSingle: {
                    type: "string",
                    description: "Titled single",
                    oneOf: [
                      { const: "value1", title: "First Option" },
                      { const: "value2", title: "Second Option" },
                      { const: "value3", title: "Third Option" },
                    ],
                  },
                  legacyEnum: {
                    type: "string",
                    description: "Legacy titled",
                    enum: ["opt1", "opt2", "opt3"],
                    enumNames: ["Option One", "Option Two", "Option Three"],
                  },
                  untitledMulti: {
                    type: "array",
                    description: "Untitled multi",
                    minItems: 1,
                    maxItems: 3,
                    items: { type: "string", enum: ["option1", "option2", "option3"] },
                  },
                  titledMulti: {
                    type: "array",
                    description: "Titled multi",
                    minItems: 1,
                    maxItems: 3,
                    items: {
                      anyOf: [
                        { const: "value1", title: "First Choice" },
                        { const: "value2", title: "Second Choice" },
                        { const: "value3", title: "Third Choice" },
                      ],
                    },
                  },
                },
                required: [],
              },
            },
          },
          ElicitResultSchema,
        );
        return {
          content: [
            { type: "text", text: `Elicitation completed: action=${res.action}, content=${JSON.stringify(res.content ?? {})}` },
          ],
        };
      }
      case "json_schema_2020_12_tool":
        return { content: [{ type: "text", text: `Received: ${JSON.stringify(args)}` }] };
      case "test_reconnection": {
        await sleep(100);
        // Available when the client negotiated >= 2025-11-25 and got a priming event.
        extra.closeSSEStream?.();
        await sleep(200);
        return { content: [{ type: "text", text: "Reconnection test completed" }] };
      }
      default:
        throw new McpError(ErrorCode.InvalidParams, `Tool ${req.params.name} not found`);
    }
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: "test://template/{id}/data",
        name: "template-data",
        description: "Data for an id",
        mimeType: "application/json",
      },
    ],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (req) => {
    const { uri } = req.params;
    if (uri === "test://static-text") {
      return { contents: [{ uri, mimeType: "text/plain", text: "This is the content of the static text resource." }] };
    }
    if (uri === "test://static-binary") {
      return { contents: [{ uri, mimeType: "image/png", blob: PNG_1X1 }] };
    }
    if (uri === "test://watched-resource") {
      return { contents: [{ uri, mimeType: "text/plain", text: "Watched resource content." }] };
    }
    const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
    if (m) {
      const id = m[1];
      return {
        contents: [
          { uri, mimeType: "application/json", text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) },
        ],
      };
    }
    throw new McpError(ErrorCode.InvalidParams, `Resource ${uri} not found`);
  });
  server.setRequestHandler(SubscribeRequestSchema, async (req) => {
    subscriptions.add(req.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (req) => {
    subscriptions.delete(req.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (req) => {
    const args = req.params.arguments ?? {};
    switch (req.params.name) {
      case "test_simple_prompt":
        return { messages: [{ role: "user", content: { type: "text", text: "This is a simple prompt for testing." } }] };
      case "test_prompt_with_arguments":
        return {
          messages: [
            {
              role: "user",
              content: { type: "text", text: `Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'` },
            },
          ],
        };
      case "test_prompt_with_embedded_resource":
        return {
          messages: [
            {
              role: "user",
              content: {
                type: "resource",
                resource: { uri: args.resourceUri, mimeType: "text/plain", text: "Embedded resource content for testing." },
              },
            },
            { role: "user", content: { type: "text", text: "Please process the embedded resource above." } },
          ],
        };
      case "test_prompt_with_image":
        return {
          messages: [
            { role: "user", content: { type: "image", data: PNG_1X1, mimeType: "image/png" } },
            { role: "user", content: { type: "text", text: "Please analyze the image above." } },
          ],
        };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Prompt ${req.params.name} not found`);
    }
  });
  server.setRequestHandler(CompleteRequestSchema, async (req) => {
    const value = req.params.argument?.value ?? "";
    const values = ["paris", "park", "party", "test", "testing"].filter((v) => v.startsWith(value));
    return { completion: { values, total: values.length, hasMore: false } };
  });
  server.setRequestHandler(SetLevelRequestSchema, async () => ({}));

  return server;
}

// ------------------------------------------------------------------------------------------
// HTTP

const LOCAL_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]", "::1"]);

function hostnameOf(value) {
  try {
    return new URL(value.includes("://") ? value : `http://${value}`).hostname.toLowerCase();
  } catch {
    return null;
  }
}

function reject(res, status, message, id = null) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id }));
}

const transports = new Map();

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString("utf8");
  return text ? JSON.parse(text) : undefined;
}

const httpServer = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://localhost");
    if (url.pathname !== "/mcp") return reject(res, 404, "Not found");

    // DNS rebinding protection for a localhost server: check Host and Origin.
    const host = hostnameOf(req.headers.host ?? "");
    if (!host || !LOCAL_HOSTS.has(host)) return reject(res, 403, `Invalid Host header: ${req.headers.host}`);
    if (req.headers.origin !== undefined && !LOCAL_HOSTS.has(hostnameOf(req.headers.origin) ?? "")) {
      return reject(res, 403, `Invalid Origin header: ${req.headers.origin}`);
    }

    const sessionId = req.headers["mcp-session-id"];
    let body;
    if (req.method === "POST") {
      try {
        body = await readJson(req);
      } catch {
        return reject(res, 400, "Parse error");
      }
    }
    if (sessionId) {
      const transport = transports.get(sessionId);
      if (!transport) return reject(res, 404, "Session not found", body?.id ?? null);
      return await transport.handleRequest(req, res, body);
    }
    if (req.method !== "POST" || body?.method !== "initialize") {
      return reject(res, 400, "Bad Request: No valid session ID provided", body?.id ?? null);
    }
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new EventStore(),
      retryInterval: 500,
      onsessioninitialized: (sid) => transports.set(sid, transport),
      onsessionclosed: (sid) => transports.delete(sid),
    });
    transport.onclose = () => {
      if (transport.sessionId) transports.delete(transport.sessionId);
    };
    await createServer().connect(transport);
    await transport.handleRequest(req, res, body);
  } catch (err) {
    console.error("request failed:", err);
    if (!res.headersSent) reject(res, 500, "Internal server error");
    else res.end();
  }
});

const argPort = process.argv.indexOf("--port");
const port = Number(argPort > 0 ? process.argv[argPort + 1] : process.env.PORT || 3000);
httpServer.listen(port, "127.0.0.1", () => {
  console.error(`conformance server listening on port ${httpServer.address().port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    httpServer.closeAllConnections?.();
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
