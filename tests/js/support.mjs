// What the JS tests share: the live server they run against, packages from frontend/, a GraphQL
// helper, a TCP proxy that can cut connections, and the browser.
//
// tests/test_frontend.py starts the real app and runs these files with `node --test`, passing
// GQL_API_URL (the app), CHROMIUM (the browser binary) and GQL_API_SCREENSHOTS (where pictures go).
import net from "node:net";
import { createRequire } from "node:module";
import { once } from "node:events";

const require = createRequire(new URL("../../frontend/package.json", import.meta.url));
/** `require` a package from frontend/node_modules (tests/js has none of its own). */
export const frontendRequire = require;
export const { createClient } = require("graphql-ws");
export const WebSocket = require("ws");

export const BASE_URL = process.env.GQL_API_URL;
if (!BASE_URL) throw new Error("GQL_API_URL is not set: run these through tests/test_frontend.py");
export const SCREENSHOTS = process.env.GQL_API_SCREENSHOTS;

/** POST a GraphQL operation to `url` (the app by default); returns `data` or throws the errors. */
export async function graphql(token, query, variables = {}, url = BASE_URL) {
  const response = await fetch(`${url}/graphql`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: token },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) throw new Error(JSON.stringify(body.errors));
  return body.data;
}

/** The demo stream and a token per demo user, from the app's development endpoint. */
export async function demoData() {
  const response = await fetch(`${BASE_URL}/demo/data`);
  if (!response.ok) throw new Error(`GET /demo/data: ${response.status}`);
  const data = await response.json();
  return { streamId: data.streamId, token: (name) => data.users[name].token };
}

/** Send a chat message over HTTP; returns its cursor. */
export async function say(token, streamId, content) {
  const data = await graphql(
    token,
    "mutation ($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { cursor } }",
    { s: streamId, c: content },
  );
  return data.sendChatMessage.cursor;
}

/** A new LIVE stream owned by `token`'s user, so a test sees only its own messages. */
export async function newStream(token, title) {
  const data = await graphql(token, "mutation ($t: String!) { createLiveStream(title: $t) { id } }", { t: title });
  return data.createLiveStream.id;
}

/**
 * A TCP proxy in front of the app whose connections the test can cut, like a network drop: `cut()`
 * resets every open connection and refuses new ones until `restore()`.
 */
export async function cuttableProxy(targetUrl = BASE_URL) {
  const target = new URL(targetUrl);
  const sockets = new Set();
  let offline = false;
  const track = (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {}); // a reset is what the test asked for
  };
  const server = net.createServer((client) => {
    track(client);
    if (offline) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    track(upstream);
    client.pipe(upstream).on("close", () => client.destroy());
    upstream.pipe(client).on("close", () => upstream.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      offline = true;
      for (const socket of sockets) socket.resetAndDestroy();
    },
    restore() {
      offline = false;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, "close");
    },
  };
}

/** Debian's Chromium, headless, with nothing that would call home. */
export function launchBrowser() {
  const { chromium } = require("playwright-core"); // loaded only by the tests that need it
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-background-networking"],
  });
}

/**
 * A browser context that records every request and Content-Security-Policy violation of its
 * pages, so a test can assert that nothing left the app and nothing was blocked.
 */
export async function recordedContext(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 }, ...options });
  const requests = [];
  const problems = [];
  context.on("request", (request) => requests.push(request.url()));
  context.on("console", (message) => {
    if (message.type() === "error") problems.push(message.text());
  });
  context.on("weberror", (error) => problems.push(String(error.error())));
  return { context, requests, problems };
}

/** Every URL requested that is not on one of `origins` (data: URLs are in the page itself). */
export function foreignRequests(requests, origins) {
  return requests.filter(
    (url) => !url.startsWith("data:") && !origins.some((origin) => url === origin || url.startsWith(`${origin}/`)),
  );
}
