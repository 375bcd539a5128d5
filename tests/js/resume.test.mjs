// resume.js with the graphql-ws npm client in Node: after a dropped connection, graphql-ws
// reconnects by itself and the subscription resumes after the last message it delivered.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { resumable } from "../../frontend/src/resume.js";
import { WebSocket, createClient, cuttableProxy, demoData, newStream, say } from "./support.mjs";

const MESSAGES = `subscription ($s: ID!, $after: String) {
  messageAdded(streamId: $s, after: $after) { content cursor }
}`;

let demo;
let proxy;

before(async () => {
  demo = await demoData();
  proxy = await cuttableProxy();
});

after(() => proxy.close());

/** A graphql-ws client reaching the app through the proxy; `connected(n)`: the n-th connection is up. */
function connect(token) {
  let connections = 0;
  let waiting = [];
  const client = createClient({
    url: `${proxy.url.replace("http", "ws")}/graphql`,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: token },
    retryAttempts: Infinity,
    // graphql-ws retries close events only; a refused connection is an error event.
    shouldRetry: () => true,
    retryWait: () => new Promise((resolve) => setTimeout(resolve, 20)),
    on: {
      connected: () => {
        connections += 1;
        for (const resolve of waiting) resolve();
        waiting = [];
      },
    },
  });
  const connected = async (count) => {
    while (connections < count) await new Promise((resolve) => waiting.push(resolve));
  };
  return { client, connected };
}

/** Subscribe and collect the messages' contents; `until(n)` resolves once n have arrived. */
function collect(client, variables) {
  const seen = [];
  let waiting = [];
  client.subscribe(
    { query: MESSAGES, variables },
    {
      next: (result) => {
        assert.equal(result.errors, undefined);
        seen.push(result.data.messageAdded.content);
        for (const resolve of waiting) resolve();
        waiting = [];
      },
      error: (error) => assert.fail(`subscription failed: ${error.code ?? ""} ${error.reason ?? error.message}`),
      complete: () => {},
    },
  );
  const until = async (count) => {
    while (seen.length < count) await new Promise((resolve) => waiting.push(resolve));
    return seen;
  };
  return { seen, until };
}

/**
 * In a new stream, subscribe after message 0; 1 is sent and seen; the connection drops; 2 and 3 are
 * sent while it is down; it comes back and 4 is sent. Returns every message the client saw.
 */
async function dropDuring(wrap) {
  const sender = demo.token("carol");
  const { client, connected } = connect(demo.token("bob"));
  try {
    const streamId = await newStream(sender, "resume test");
    const start = await say(sender, streamId, "0");
    const messages = collect(wrap(client), { s: streamId, after: start });
    await say(sender, streamId, "1");
    await messages.until(1);
    proxy.cut();
    await say(sender, streamId, "2");
    await say(sender, streamId, "3");
    proxy.restore();
    await connected(2);
    await say(sender, streamId, "4");
    await messages.until(4);
    return messages.seen;
  } finally {
    await client.dispose();
  }
}

test("resumable() resubscribes after the last message seen: nothing missed or repeated", async () => {
  // A message repeated would show before 4, so `until(4)` would return it.
  assert.deepEqual(await dropDuring((client) => resumable(client)), ["1", "2", "3", "4"]);
});

test("without it, graphql-ws resubscribes with the original cursor and repeats messages", async () => {
  assert.deepEqual((await dropDuring((client) => client)).slice(0, 4), ["1", "1", "2", "3"]);
});

test("operations without the cursor variable pass through unchanged", () => {
  const payloads = [];
  const stub = { subscribe: (payload) => (payloads.push(payload), () => {}) };
  const payload = { query: "subscription { ping }", variables: { a: 1 } };
  resumable(stub).subscribe(payload, { next() {}, error() {}, complete() {} });
  assert.equal(payloads[0], payload);
});
