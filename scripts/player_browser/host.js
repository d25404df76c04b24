// A small MCP Apps host, bundled for the browser: an MCP client (streamable HTTP, or a relay to a stdio server
// through the page's exposed functions), the ext-apps AppBridge, and a sandboxed iframe whose CSP is built from the
// resource's _meta.ui.csp the way hosts do (media, images, scripts and styles only from resourceDomains).
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";

const APPS = { "io.modelcontextprotocol/ui": { mimeTypes: ["text/html;profile=mcp-app"] } };

// Relay to a stdio server: the Node side owns the server process; messages cross with exposeFunction/evaluate.
class RelayTransport {
  async start() {
    window.__relayDeliver = (msg) => this.onmessage && this.onmessage(msg);
  }
  async send(msg) {
    await window.__relaySend(msg);
  }
  async close() {
    this.onclose && this.onclose();
  }
}

let client = null;

async function connect(mode) {
  if (client) return client;
  client = new Client({ name: "kling-player-host", version: "1.0.0" }, { capabilities: { extensions: APPS } });
  const transport = mode === "stdio" ? new RelayTransport() : new StreamableHTTPClientTransport(new URL("/mcp", location.href));
  await client.connect(transport);
  return client;
}

function cspFor(csp) {
  const domains = (csp && csp.resourceDomains ? csp.resourceDomains : []).join(" ");
  return [
    "default-src 'none'",
    `script-src 'unsafe-inline' ${domains}`,
    `style-src 'unsafe-inline' ${domains}`,
    `img-src data: ${domains}`,
    `media-src ${domains || "'none'"}`,
    `font-src ${domains || "'none'"}`,
    "connect-src 'none'",
  ].join("; ");
}

// Renders the app for one tool call; returns the bridge. opts: {mode, tool, args, theme, dropCsp, id}.
window.hostRun = async (opts) => {
  const c = await connect(opts.mode);
  const tools = await c.listTools();
  const tool = tools.tools.find((t) => t.name === opts.tool);
  const uri = tool && tool._meta && tool._meta.ui && tool._meta.ui.resourceUri;
  if (!uri) throw new Error(`${opts.tool} links no UI resource`);
  const read = await c.readResource({ uri });
  const content = read.contents[0];
  const csp = opts.dropCsp ? {} : content._meta && content._meta.ui && content._meta.ui.csp;
  const policy = `<meta http-equiv="Content-Security-Policy" content="${cspFor(csp)}">`;
  const iframe = document.createElement("iframe");
  iframe.id = opts.id;
  iframe.title = `player ${opts.id}`;
  iframe.setAttribute("sandbox", "allow-scripts");
  iframe.style.cssText = "width:640px;height:760px;border:1px solid #888;display:block;margin:8px 0";
  document.body.append(iframe);
  const bridge = new AppBridge(c, { name: "kling-player-host", version: "1.0.0" }, { serverTools: {}, logging: {} }, {
    hostContext: { theme: opts.theme || "light", displayMode: "inline", platform: "web" },
  });
  const initialized = new Promise((resolve) => (bridge.oninitialized = resolve));
  // Connected before the document loads: the view sends ui/initialize as soon as it runs.
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = content.text.replace("<head>", `<head>${policy}`);
  await initialized;
  bridge.sendToolInput({ arguments: opts.args });
  const result = await c.callTool({ name: opts.tool, arguments: opts.args });
  await bridge.sendToolResult(result);
  (window.__bridges ||= {})[opts.id] = bridge;
  return result.structuredContent || null;
};

window.hostTheme = (id, theme) => window.__bridges[id].setHostContext({ theme });
window.hostTools = async (mode) => (await (await connect(mode)).listTools()).tools.map((t) => ({ name: t.name, meta: t._meta || null }));
