// The player (MCP App) in headless Chromium, behind the ext-apps AppBridge, against a real kling-mcp server in
// sandbox mode: `node run.mjs http` (kling-mcp serve --transport http, proxied under the host page's origin) or
// `node run.mjs stdio` (a kling-mcp stdio process; the page's MCP client reaches it through a relay here).
// Prints PASS/FAIL per check and exits 1 if any failed. Env: KLING_PYTHON (a python that imports kling_mcp),
// CHROMIUM (default /usr/bin/chromium), KLING_SCREENSHOTS (folder for the light/dark screenshots; http run only).
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, mkdirSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { StdioClientTransport } from "@modelcontextprotocol/client/stdio";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MODE = process.argv[2] || "http";
const PYTHON = process.env.KLING_PYTHON || "python3";
const WORK = mkdtempSync(path.join(tmpdir(), "kling-player-"));
const SHOTS = process.env.KLING_SCREENSHOTS || "";
const ENV = {
  ...process.env,
  KLING_MCP_MODE: "sandbox",
  PIXAZO_API_KEY: "",
  KLING_MCP_STATE_DIR: path.join(WORK, "state"),
  KLING_MCP_OUTPUT_DIR: path.join(WORK, "out"),
  // About 3.5 s for a 3 s clip: slow enough that queued and processing are on screen, fast enough for CI.
  KLING_MCP_SANDBOX_TIME_SCALE: "20",
  KLING_MCP_SANDBOX_RENDER_SIZE: "640x360",
  KLING_MCP_POLL_INTERVAL: "1",
  KLING_MCP_LOG_LEVEL: "WARNING",
};
delete ENV.PIXAZO_API_KEY;

let failed = 0;
let passed = 0;
const check = (name, ok, detail = "") => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "PASS" : "FAIL"} [${MODE}] ${name}${detail ? `: ${detail}` : ""}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, fn, timeoutMs = 60000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}
const freePort = () =>
  new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

async function startHttpServer() {
  const port = await freePort();
  const proc = spawn(PYTHON, ["-m", "kling_mcp", "serve", "--transport", "http", "--host", "127.0.0.1", "--port", String(port)], {
    env: ENV,
    stdio: ["ignore", "inherit", "inherit"],
  });
  await until("the HTTP server", async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
    } catch {
      return false;
    }
  });
  return { proc, url: `http://127.0.0.1:${port}` };
}

// Serves the host page and, in http mode, proxies /mcp to the server (the page and its MCP endpoint share an origin).
async function startHostPage(upstream) {
  const bundle = await build({ entryPoints: [path.join(HERE, "host.js")], bundle: true, format: "esm", write: false, platform: "browser" });
  const js = bundle.outputFiles[0].text;
  const page = '<!doctype html><html><head><meta charset="utf-8"><title>host</title></head><body><script type="module" src="/host.js"></script></body></html>';
  const server = http.createServer((req, res) => {
    if (req.url === "/") return res.writeHead(200, { "content-type": "text/html" }).end(page);
    if (req.url === "/favicon.ico") return res.writeHead(204).end();
    if (req.url === "/host.js") return res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    if (upstream && req.url.startsWith("/mcp")) {
      const target = new URL(upstream);
      const headers = { ...req.headers, host: target.host };
      delete headers.origin; // the proxy is the client the server sees
      const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      req.pipe(up);
      up.on("error", () => res.destroy());
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

async function plainClientCheck(httpUrl) {
  // A client that did not negotiate MCP Apps: tools/list without _meta.ui and without the app-only tools.
  const c = new Client({ name: "plain", version: "1" });
  const transport = httpUrl
    ? new StreamableHTTPClientTransport(new URL("/mcp", httpUrl))
    : new StdioClientTransport({ command: PYTHON, args: ["-m", "kling_mcp"], env: ENV, stderr: "ignore" });
  await c.connect(transport);
  const tools = (await c.listTools()).tools;
  check("a client without Apps sees no player tools", !tools.some((t) => t.name.startsWith("player_")), tools.map((t) => t.name).join(","));
  check("a client without Apps sees no _meta.ui", !tools.some((t) => t._meta && t._meta.ui));
  const result = await c.callTool({ name: "generate_video", arguments: { prompt: "plain client kite", duration: 3, wait_seconds: 30 } });
  check("a client without Apps gets the usual result", result.structuredContent && result.structuredContent.status === "completed" && result.content[0].type === "text");
  await c.close();
}

const frameOf = async (page, id) => (await page.$(`iframe#${id}`)).contentFrame();
const state = (frame) =>
  frame.evaluate(() => {
    const v = document.getElementById("video");
    const app = document.getElementById("app");
    return { status: app.dataset.status, seen: app.dataset.seen, ready: v.readyState, time: v.currentTime, src: v.currentSrc, error: v.error && v.error.code, shots: document.querySelectorAll("#shots button").length, chain: document.querySelectorAll("#chain button").length, text: document.getElementById("error").textContent };
  });

async function plays(frame, label) {
  await until(`${label}: a video source`, async () => (await state(frame)).status === "completed" && (await state(frame)).src);
  await frame.evaluate(() => {
    const v = document.getElementById("video");
    v.muted = true;
    return v.play();
  });
  const start = await until(`${label}: readyState >= 3`, async () => {
    const s = await state(frame);
    return s.ready >= 3 ? s : null;
  });
  const later = await until(`${label}: currentTime advancing`, async () => {
    const s = await state(frame);
    return s.time > start.time + 0.3 ? s : null;
  }, 15000);
  check(`${label} plays`, later.ready >= 3 && later.time > start.time, `readyState ${later.ready}, currentTime ${start.time.toFixed(2)} -> ${later.time.toFixed(2)}`);
  return later;
}

const step = (what) => console.error(`[${MODE}] ${new Date().toISOString().slice(11, 19)} ${what}`);
const WATCHDOG_MS = 240000;

const inOrder = (seen, wanted) => {
  let i = 0;
  for (const s of seen) if (s === wanted[i]) i++;
  return i === wanted.length;
};

async function main() {
  setTimeout(() => {
    console.log(`FAIL [${MODE}] did not finish within ${WATCHDOG_MS / 1000} s`);
    process.exit(1);
  }, WATCHDOG_MS).unref();
  let server = null;
  let stdio = null;
  if (MODE === "http") server = await startHttpServer();
  process.on("exit", () => server && server.proc.kill("SIGTERM"));
  step("server up");
  const host = await startHostPage(server && server.url);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"],
  });
  const context = await browser.newContext({ viewport: { width: 680, height: 820 } });
  // In every frame, the player's included: CSP violations are recorded where the test can read them.
  await context.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  if (MODE === "stdio") {
    stdio = new StdioClientTransport({ command: PYTHON, args: ["-m", "kling_mcp"], env: ENV, stderr: "inherit" });
    stdio.onmessage = (msg) => page.evaluate((m) => window.__relayDeliver(m), msg).catch(() => {});
    await stdio.start();
    await page.exposeFunction("__relaySend", (msg) => stdio.send(msg));
  }
  await page.goto(host.url);
  await page.waitForFunction(() => typeof window.hostRun === "function");
  page.on("console", (m) => m.type() !== "debug" && step(`console ${m.type()}: ${m.text()}`));
  step("host page loaded");
  const run = (opts) => page.evaluate((o) => window.hostRun(o), { mode: MODE, ...opts });
  const csp = async (frame) => frame.evaluate(() => window.__csp);

  // 1. generate_video: states in order, then the video plays, with no CSP violation.
  const first = await run({ id: "gen", tool: "generate_video", args: { prompt: "a red kite over the dunes at dusk", duration: 3, wait_seconds: 0 }, theme: "light" });
  check("generate_video answered at once with a running job", first && ["queued", "processing"].includes(first.status), first && first.status);
  const gen = await frameOf(page, "gen");
  const played = await plays(gen, "the generated video");
  const seen = played.seen.split(" ");
  check("progress states appear in order", inOrder(seen, ["queued", "processing", "completed"]) || inOrder(seen, ["processing", "completed"]), played.seen);
  check("the video loads with no CSP violation", (await csp(gen)).length === 0, JSON.stringify(await csp(gen)));
  if (SHOTS) {
    mkdirSync(SHOTS, { recursive: true });
    await (await page.$("iframe#gen")).screenshot({ path: path.join(SHOTS, "player-light.png") });
  }

  // 2. extend from the app: a child job that plays, and the chain of two.
  await gen.fill("#extend-prompt", "the kite climbs into the first stars");
  await gen.fill("#extend-seconds", "3");
  await gen.click("#extend");
  const confirmText = await gen.textContent("#confirm-text");
  check("extend states its seconds before it runs", /3 s of video/.test(confirmText), confirmText);
  await gen.click("#confirm-yes");
  await until("the child job", async () => {
    const s = await state(gen);
    return s.chain === 2 || (s.text ? `error shown: ${s.text}` : false);
  });
  const shown = await state(gen);
  if (shown.chain !== 2) throw new Error(`no child job: ${shown.text}`);
  const child = await plays(gen, "the extension (child job)");
  check("the chain shows parent and extension", child.chain === 2 && child.src !== played.src, `${child.chain} clips`);
  check("the extension loads with no CSP violation", (await csp(gen)).length === 0, JSON.stringify(await csp(gen)));
  // The chain joined from the app (free): over HTTP the film plays from the signed route, over stdio its path shows.
  await gen.click("#join");
  const film = await until("the joined film", () => gen.evaluate(() => document.getElementById("film").textContent));
  check("joining the chain makes a 6 s film", /Joined 2 clips into 6(\.\d+)? s/.test(film), film);
  if (MODE === "http") {
    const filmPlays = await until("the film playing", async () => {
      const s = await gen.evaluate(() => {
        const v = document.getElementById("film-video");
        v.muted = true;
        v.play().catch(() => {});
        return { ready: v.readyState, time: v.currentTime };
      });
      return s.ready >= 3 && s.time > 0.3 ? s : null;
    }, 15000);
    check("the joined film plays", filmPlays.time > 0.3, `currentTime ${filmPlays.time.toFixed(2)}`);
  }
  if (SHOTS) {
    await page.evaluate(() => window.hostTheme("gen", "dark"));
    await until("the dark theme", () => gen.evaluate(() => document.documentElement.dataset.theme === "dark"));
    await (await page.$("iframe#gen")).screenshot({ path: path.join(SHOTS, "player-dark.png") });
  }

  // 3. a storyboard shows its shots, and a shot's button seeks to it.
  await run({ id: "story", tool: "storyboard", args: { shots: [{ prompt: "a lighthouse at dawn", duration: 3 }, { prompt: "gulls over the waves", duration: 3 }], wait_seconds: 0 } });
  const story = await frameOf(page, "story");
  await plays(story, "the storyboard");
  const shots = await state(story);
  check("a storyboard shows its shots", shots.shots === 2, `${shots.shots} shots`);
  await story.click("#shots li:nth-child(2) button");
  const seek = await until("the seek to shot 2", async () => {
    const s = await state(story);
    return s.time >= 2.9 ? s : null;
  }, 10000);
  check("a shot's button jumps to it", seek.time >= 2.9, `currentTime ${seek.time.toFixed(2)}`);
  await story.click("#retake");
  const retakeText = await story.textContent("#confirm-text");
  check("another take states its seconds before it runs", /6 s of video/.test(retakeText), retakeText);
  await story.click("#confirm-yes");
  await until("the retake's new job", async () => {
    const s = await state(story);
    return s.status !== "completed" || s.text ? s : null;
  });
  if ((await state(story)).text) throw new Error(`no retake: ${(await state(story)).text}`);
  const retake = await plays(story, "another take (a new job)");
  check("another take is a new job with the same shots", retake.src !== seek.src && retake.shots === 2, `${retake.shots} shots`);

  // 4. the control: without the declared media origins the host's CSP blocks the video (so check 1 can fail).
  await run({ id: "nocsp", tool: "check_status", args: { request_id: first.request_id }, dropCsp: true });
  const blocked = await frameOf(page, "nocsp");
  const violations = await until("a CSP violation without the declared origins", async () => {
    const v = await csp(blocked);
    return v.length ? v : null;
  }, 15000);
  check("without resourceDomains the video is blocked (control)", violations.some((v) => v.startsWith("media-src")), violations[0]);

  // 5. a client that did not negotiate Apps gets what it always got.
  await plainClientCheck(server && server.url);
  const unexpected = consoleErrors.filter((e) => !/Content Security Policy/.test(e) || !/nocsp|media-src/.test(e));
  const beforeControl = consoleErrors.filter((e) => /Content Security Policy/.test(e)).length;
  check("no console errors besides the control's CSP report", unexpected.filter((e) => !/Content Security Policy/.test(e)).length === 0, unexpected.join(" | ").slice(0, 400));
  check("CSP reports only from the control", beforeControl <= violations.length + 2, `${beforeControl} CSP console messages`);

  await browser.close();
  host.server.close();
  if (stdio) await stdio.close();
  if (server) server.proc.kill("SIGTERM");
}

main()
  .catch((e) => {
    failed++;
    console.log(`FAIL [${MODE}] ${e.stack || e}`);
  })
  .finally(() => {
    console.log(`[${MODE}] ${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
  });
