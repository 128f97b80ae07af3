// A server built with the TypeScript SDK that asks its client (elicitation, sampling) the way
// many TypeScript servers do: with `server.elicitInput(...)` and `server.createMessage(...)`
// and no related request id. Over streamable HTTP such a request goes out on the standalone
// GET stream, not on the POST stream of the call that caused it; over stdio nothing tells
// the two apart anyway.
//
//   node typescript_asker.mjs stdio   serve over stdin/stdout
//   node typescript_asker.mjs http    serve on a loopback port; prints URL=... first
//
// The SDK is the one `npm ci` installs into tests/conformance/node_modules.
//
// Tools: `ask_name` asks for a name and `sample` for an LLM completion; with `after_hold`
// they first wait until a `hold` call is in flight, so a test can put two requests in flight
// at once without timing. `hold` answers once the next question has been answered; `pid`
// says which process serves.
import { EventEmitter, once } from "node:events";
import http from "node:http";
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";

const require = createRequire(new URL("../conformance/package.json", import.meta.url));
const { McpServer } = require("@modelcontextprotocol/sdk/server/mcp.js");
const { StdioServerTransport } = require("@modelcontextprotocol/sdk/server/stdio.js");
const { StreamableHTTPServerTransport } = require("@modelcontextprotocol/sdk/server/streamableHttp.js");
const { isInitializeRequest } = require("@modelcontextprotocol/sdk/types.js");
const { z } = require("zod");

const WAIT_MS = 30000; // any single wait; only a broken test comes near it
const events = new EventEmitter(); // "hold" when a hold starts, "answered" when a question was answered
const holding = new Set(); // the hold calls in flight
const standalone = new Map(); // session id -> a promise resolved once its GET stream is open

async function within(promise) {
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(resolve, WAIT_MS)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function beforeAsking(extra, afterHold) {
  if (afterHold && holding.size === 0) await within(once(events, "hold"));
  // Over HTTP the question can only go out once the client has opened its GET stream.
  if (extra.sessionId !== undefined) await within(standalone.get(extra.sessionId) ?? Promise.resolve());
}

const text = (value) => ({ content: [{ type: "text", text: value }] });

function build() {
  const server = new McpServer({ name: "typescript-asker", version: "1.0.0" });
  server.registerTool(
    "ask_name",
    { description: "Ask the user for a name, outside any request.", inputSchema: { after_hold: z.boolean().optional() } },
    async ({ after_hold }, extra) => {
      await beforeAsking(extra, after_hold);
      try {
        const answer = await server.server.elicitInput({
          message: "What is your name?",
          requestedSchema: { type: "object", properties: { name: { type: "string" } }, required: ["name"] },
        }); // no relatedRequestId: over HTTP on the standalone stream
        return text(JSON.stringify({ action: answer.action, content: answer.content ?? null }));
      } catch (error) {
        return text(`refused: ${error.message}`);
      } finally {
        events.emit("answered");
      }
    },
  );
  server.registerTool(
    "sample",
    {
      description: "Ask the client's LLM to complete a prompt, outside any request.",
      inputSchema: { prompt: z.string(), after_hold: z.boolean().optional() },
    },
    async ({ prompt, after_hold }, extra) => {
      await beforeAsking(extra, after_hold);
      try {
        const answer = await server.server.createMessage({
          messages: [{ role: "user", content: { type: "text", text: prompt } }],
          maxTokens: 50,
        });
        return text(`${answer.content.text} (model ${answer.model})`);
      } catch (error) {
        return text(`refused: ${error.message}`);
      } finally {
        events.emit("answered");
      }
    },
  );
  server.registerTool(
    "hold",
    { description: "Stay in flight until the next question has been answered.", inputSchema: {} },
    async () => {
      const marker = {};
      holding.add(marker);
      const answered = once(events, "answered");
      events.emit("hold");
      try {
        await within(answered);
      } finally {
        holding.delete(marker);
      }
      return text("held");
    },
  );
  server.registerTool("pid", { description: "This process's id.", inputSchema: {} }, async () =>
    text(String(process.pid)),
  );
  return server;
}

async function serveStdio() {
  await build().connect(new StdioServerTransport());
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function serveHttp() {
  const transports = new Map(); // session id -> transport
  const httpServer = http.createServer(async (req, res) => {
    try {
      const sessionId = req.headers["mcp-session-id"];
      if (req.method === "POST") {
        const body = JSON.parse(await readBody(req));
        let transport = transports.get(sessionId);
        if (transport === undefined && isInitializeRequest(body)) {
          let opened;
          const open = new Promise((resolve) => (opened = resolve));
          transport = new StreamableHTTPServerTransport({
            sessionIdGenerator: () => randomUUID(),
            onsessioninitialized: (id) => {
              transports.set(id, transport);
              standalone.set(id, open);
              transport.openedStandalone = opened;
            },
          });
          transport.onclose = () => transports.delete(transport.sessionId);
          await build().connect(transport);
        }
        if (transport === undefined) {
          res.writeHead(404).end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null }));
          return;
        }
        await transport.handleRequest(req, res, body);
      } else {
        const transport = transports.get(sessionId);
        if (transport === undefined) {
          res.writeHead(404).end();
          return;
        }
        if (req.method === "GET") {
          // The SDK registers the stream before it answers; once the headers go out, it is open.
          const writeHead = res.writeHead.bind(res);
          res.writeHead = (...args) => {
            const result = writeHead(...args);
            transport.openedStandalone?.();
            return result;
          };
        }
        await transport.handleRequest(req, res);
      }
    } catch (error) {
      if (!res.headersSent) res.writeHead(500).end(String(error));
    }
  });
  httpServer.listen(0, "127.0.0.1", () => {
    process.stdout.write(`URL=http://127.0.0.1:${httpServer.address().port}/mcp\n`);
  });
}

if (process.argv[2] === "http") serveHttp();
else await serveStdio();
