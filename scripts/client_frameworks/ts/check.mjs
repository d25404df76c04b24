// The TypeScript SDK client (@modelcontextprotocol/sdk) with its defaults, over stdio or streamable HTTP.
// No model: a TS app hands the content blocks to its model itself, so the blocks are measured.
// Usage: node check.mjs stdio|http  (env: KLING_SERVER_PYTHON, and CF_MCP_URL for http; CF_SLOW_MCP_URL or
// CF_SLOW_ENV_JSON for the timeout check, which uses a sandbox slower than the SDK's 60 s default timeout).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { DEFAULT_REQUEST_TIMEOUT_MSEC } from "@modelcontextprotocol/sdk/shared/protocol.js";

const TOOLS = ["generate_video", "animate_image", "storyboard", "extend_video", "concat_videos", "check_status", "list_jobs"];
const transportKind = process.argv[2];
const items = [];
const t0 = Date.now();
const say = (s) => process.stdout.write(s + "\n");
const expect = (name, good, detail, reason) => {
  items.push([name, good, good ? detail : reason]);
  say(`  ${good ? "PASS" : "FAIL"} ${name}: ${good ? detail : reason}`);
};
const view = (content) => {
  const text = content.filter((b) => b.type === "text").map((b) => b.text).join("");
  const images = content.filter((b) => b.type === "image").map((b) => Buffer.from(b.data, "base64").length);
  const other = content.filter((b) => b.type !== "text" && b.type !== "image").map((b) => b.type);
  return { text, images, other, describe: `${text.length} chars of text, images: ${images.map((b) => b + " B").join(", ") || "none"}${other.length ? `; other parts ${JSON.stringify(other)}` : ""}` };
};

function transport(url, env) {
  if (url) return new StreamableHTTPClientTransport(new URL(url));
  return new StdioClientTransport({ command: process.env.KLING_SERVER_PYTHON, args: ["-m", "kling_mcp"], env, stderr: "ignore" });
}

async function connect(url, env) {
  const client = new Client({ name: "kling-cf-ts", version: "1.0.0" });
  await client.connect(transport(url, env));
  return client;
}

async function checks(client) {
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  expect("a tools", JSON.stringify(names) === JSON.stringify([...TOOLS].sort()), `${names.length} tools`, `tools ${names}`);
  const gen = await client.callTool({ name: "generate_video", arguments: { prompt: `A red fox trots through fresh snow at dawn (ts ${transportKind})`, duration: 3, aspect_ratio: "16:9" } });
  const v = view(gen.content);
  const problems = [];
  if (gen.isError) problems.push("isError result");
  if (!v.text.includes(".mp4")) problems.push(`result text names no finished video: ${JSON.stringify(v.text.slice(0, 300))}`);
  if (v.text.length > 2500) problems.push(`${v.text.length} chars of text > 2500`);
  if (v.images.length > 1) problems.push(`${v.images.length} images > 1`);
  if (v.images.some((b) => b > 24000)) problems.push(`image over 24000 B`);
  expect("b generate_video", problems.length === 0, v.describe, problems.join("; ") + ` (${v.describe})`);
  for (const [label, name, args, needles] of [
    ["c invalid storyboard", "storyboard", { shots: [{ prompt: "A lighthouse at dusk", duration: 10 }, { prompt: "Its beam sweeps the fog", duration: 10 }] }, ["15 s", "at most 15", "total"]],
    ["c unknown check_status", "check_status", { request_id: "no-such-job-0000" }, ["no-such-job-0000", "unknown", "not found", "no job"]],
  ]) {
    try {
      const r = await client.callTool({ name, arguments: args });
      const text = view(r.content).text;
      const bad = [];
      if (!needles.some((n) => text.toLowerCase().includes(n.toLowerCase()))) bad.push(`text names none of ${needles}: ${JSON.stringify(text.slice(0, 300))}`);
      if (text.includes("must be shot")) bad.push(`the error text is not a sentence: ${JSON.stringify(text.slice(0, 300))}`);
      expect(label, bad.length === 0, JSON.stringify(text.slice(0, 160)), bad.join("; "));
    } catch (e) {
      expect(label, false, "", `${e.name}: ${e.message}`);
    }
  }
  return tools;
}

// A generation asked to wait as long as the schema allows, on a sandbox slower than the SDK's default timeout.
async function longWait(tools, url, env) {
  const max = tools.find((t) => t.name === "generate_video")?.inputSchema?.properties?.wait_seconds;
  const maxWait = max?.maximum ?? max?.anyOf?.find((s) => s.maximum !== undefined)?.maximum;
  say(`  note: wait_seconds maximum in the schema: ${maxWait}; SDK default request timeout ${DEFAULT_REQUEST_TIMEOUT_MSEC / 1000} s`);
  const client = await connect(url, env);
  const started = Date.now();
  try {
    const r = await client.callTool({ name: "generate_video", arguments: { prompt: `A heron lifts off a misty lake (ts slow ${transportKind})`, duration: 3, wait_seconds: maxWait } });
    const v = view(r.content);
    expect("b wait_seconds at its schema maximum", !r.isError, `answered after ${((Date.now() - started) / 1000).toFixed(1)} s: ${JSON.stringify(v.text.slice(0, 120))}`, `isError: ${v.text.slice(0, 300)}`);
  } catch (e) {
    expect("b wait_seconds at its schema maximum", false, "", `${e.name}: ${e.message} after ${((Date.now() - started) / 1000).toFixed(1)} s (wait_seconds=${maxWait} allowed by the schema; the SDK's default timeout is ${DEFAULT_REQUEST_TIMEOUT_MSEC / 1000} s and progress does not reset it)`);
  } finally {
    await client.close();
  }
}

async function main() {
  const env = JSON.parse(process.env.CF_ENV_JSON || "{}");
  const slowEnv = JSON.parse(process.env.CF_SLOW_ENV_JSON || "{}");
  const url = transportKind === "http" ? process.env.CF_MCP_URL : undefined;
  const slowUrl = transportKind === "http" ? process.env.CF_SLOW_MCP_URL : undefined;
  try {
    const client = await connect(url, env);
    const tools = await checks(client);
    await client.close();
    await longWait(tools, slowUrl, slowEnv);
  } catch (e) {
    expect("session", false, "", `${e.name}: ${e.message}`);
  }
  const failed = items.filter(([, good]) => !good).map(([n, , w]) => `${n}: ${w}`);
  const result = failed.length || !items.length ? "FAIL" : "PASS";
  say("RESULT " + JSON.stringify({ framework: "@modelcontextprotocol/sdk (TS)", transport: transportKind, result, seconds: (Date.now() - t0) / 1000, failed, notes: [], passed: items.filter(([, g]) => g).map(([n]) => n) }));
  process.exit(result === "FAIL" ? 1 : 0);
}

main();
