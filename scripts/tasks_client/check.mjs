// node check.mjs MCP_URL: @modelcontextprotocol/ext-tasks (the reference Tasks client) against kling-mcp over
// streamable HTTP. A generation is created as a task, followed to completion and its result read; a second one is
// cancelled and the cancel acknowledged. Prints one line per step; exits 1 on the first failure.
//
// A 2026-07-28 Tasks server needs the package's rawDispatch and v2RequestFraming (its README): the TypeScript
// SDK's wire codecs reject the task shapes, so task traffic goes through rawDispatch below, a plain HTTP POST that
// sets the routing headers the spec asks for (Mcp-Method; Mcp-Name = the tool name or the task id).
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createTaskSessionFromClient, resultFromTaskOutcome } from "@modelcontextprotocol/ext-tasks/client";

const url = process.argv[2];
const PROTOCOL = "2026-07-28";
const clientInfo = { name: "kling-mcp-tasks-check", version: "1.0.0" };
const HOLD = "[sandbox:hold] "; // the sandbox keeps such a job processing, so the cancel finds it running
let nextId = 1;

function fail(message) {
  console.error(`FAIL ${message}`);
  process.exit(1);
}

function lastMessage(contentType, text) {
  if (!(contentType ?? "").startsWith("text/event-stream")) return JSON.parse(text);
  const frames = text
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => JSON.parse(line.slice(5)));
  return frames.find((frame) => "id" in frame && ("result" in frame || "error" in frame));
}

async function rawDispatch(request, options) {
  const params = request.params ?? {};
  const name = request.method === "tools/call" ? params.name : params.taskId;
  // The package passes its own headers (for tasks/*, Mcp-Name); header names are case-insensitive, so one spelling.
  const given = Object.entries(options?.context?.headers ?? {}).map(([key, value]) => [key.toLowerCase(), value]);
  const headers = {
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
    "mcp-protocol-version": PROTOCOL,
    "mcp-method": request.method,
    ...(name === undefined ? {} : { "mcp-name": name }),
    ...Object.fromEntries(given),
  };
  const body = { jsonrpc: "2.0", id: `tasks-check-${nextId++}`, ...request };
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body), signal: options?.signal });
  const message = lastMessage(response.headers.get("content-type"), await response.text());
  if (message === undefined) fail(`${request.method}: HTTP ${response.status} without a JSON-RPC answer`);
  return "error" in message ? { kind: "error", error: message.error } : { kind: "result", result: message.result };
}

const client = new Client(clientInfo, { versionNegotiation: { mode: { pin: PROTOCOL } } });
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
if (client.getProtocolEra() !== "modern") fail(`the client negotiated the ${client.getProtocolEra()} era`);
const session = createTaskSessionFromClient(client, {
  endpointId: "kling-mcp-ci",
  rawDispatch,
  v2RequestFraming: { protocolVersion: PROTOCOL, clientInfo, clientCapabilities: {} },
});

try {
  // 1. A generation as a task, followed to completion, its result read.
  const execution = await session.callTool("generate_video", { prompt: "A paper boat on a rain puddle", duration: 3 });
  if (execution.kind !== "task") fail(`generate_video answered ${execution.kind}, not a task`);
  const taskId = execution.handle.taskId;
  const seen = [];
  const { outcome } = await execution.settle({
    onEvent: (event) => {
      if (event.type === "task") seen.push(event.task.status);
    },
  });
  const result = resultFromTaskOutcome(outcome);
  const job = result.structuredContent;
  if (result.isError || job?.status !== "completed" || job.request_id !== taskId)
    fail(`the task's result is not the completed job ${taskId}: ${JSON.stringify(result).slice(0, 600)}`);
  if (job.download !== "saved" || !job.local_path) fail(`the video was not saved: ${JSON.stringify(job)}`);
  console.log(`PASS task ${taskId} created, followed (${seen.join(" -> ") || "no updates"}), completed: ${job.local_path}`);

  // 2. Another one cancelled: acknowledged, and the task ends cancelled with the plain statement about charges.
  const held = await session.callTool("generate_video", { prompt: `${HOLD}A kite that never lands`, duration: 3 });
  if (held.kind !== "task") fail(`the second generate_video answered ${held.kind}, not a task`);
  const heldId = held.handle.taskId;
  await session.cancelTask(heldId);
  const snapshot = await session.task(heldId).snapshot();
  if (snapshot.status !== "cancelled" || !/gateway has no cancel/.test(snapshot.statusMessage ?? ""))
    fail(`after the cancel the task is ${snapshot.status}: ${snapshot.statusMessage}`);
  await held.detach();
  console.log(`PASS task ${heldId} cancel acknowledged; status ${snapshot.status}: ${snapshot.statusMessage}`);
} finally {
  await session.close();
  await client.close();
}
