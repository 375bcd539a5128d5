// The pages in a real browser (Debian's Chromium): GraphiQL runs a query and a subscription,
// two demo pages chat, and a demo page whose connection drops resumes with no gap. Every page
// must load everything from the app and break no Content-Security-Policy rule.
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";

import {
  BASE_URL,
  SCREENSHOTS,
  cuttableProxy,
  demoData,
  foreignRequests,
  launchBrowser,
  newStream,
  recordedContext,
  say,
} from "./support.mjs";

const TIMEOUT = 20_000;
let browser;
let demo;

before(async () => {
  browser = await launchBrowser();
  demo = await demoData();
});

after(() => browser?.close());

async function screenshot(page, name) {
  if (SCREENSHOTS) await page.screenshot({ path: path.join(SCREENSHOTS, name) });
}

/**
 * A context whose pages requested nothing from elsewhere and logged no error (a CSP violation is
 * one), apart from those matching `expected`.
 */
function assertClean(recorded, { origins = [BASE_URL], expected = null } = {}) {
  assert.deepEqual(foreignRequests(recorded.requests, origins), []);
  assert.deepEqual(recorded.problems.filter((problem) => !expected?.test(problem)), []);
}

/** The texts of the demo page's messages, in page order. */
function shown(page) {
  return page.locator("#messages li .text").allTextContents();
}

function waitForShown(page, text) {
  return page.locator(`#messages li .text >> text="${text}"`).waitFor({ timeout: TIMEOUT });
}

function waitForStatus(page, state) {
  return page.locator(`#status[data-state="${state}"]`).waitFor({ timeout: TIMEOUT });
}

test("GraphiQL runs a query, and a subscription authenticated by the Headers pane", async () => {
  const contexts = [];
  // A fresh browser profile whose GraphiQL editors hold `query` and headers with `user`'s token
  // (GraphiQL starts from what it keeps in localStorage, as if they had been typed in).
  const open = async (query, user) => {
    const recorded = await recordedContext(browser);
    contexts.push(recorded);
    const page = await recorded.context.newPage();
    await page.addInitScript(
      ([q, h]) => {
        localStorage.setItem("graphiql:query", q);
        localStorage.setItem("graphiql:headers", h);
      },
      [query, JSON.stringify({ Authorization: demo.token(user) }, null, 2)],
    );
    await page.goto(`${BASE_URL}/graphql`);
    await page.locator(".graphiql-execute-button").click({ timeout: TIMEOUT });
    return page;
  };
  try {
    const queryPage = await open("query Me {\n  me { username name }\n}\n", "alice");
    await queryPage.locator('.result-window >> text=alice').first().waitFor({ timeout: TIMEOUT });

    // From a cursor, so the message sent next arrives however long the subscription takes to start.
    const streamId = await newStream(demo.token("carol"), "GraphiQL test");
    const start = await say(demo.token("carol"), streamId, "Welcome to my stream!");
    const subscription =
      `subscription Live {\n  messageAdded(streamId: "${streamId}", after: "${start}") {\n` +
      "    content\n    sender { username }\n    createdAt\n  }\n}\n";
    const page = await open(subscription, "bob");
    await say(demo.token("carol"), streamId, "Hello from carol");
    await page.locator(".result-window >> text=Hello from carol").waitFor({ timeout: TIMEOUT });
    await screenshot(page, "graphiql.png");
    for (const recorded of contexts) assertClean(recorded);
  } finally {
    for (const { context } of contexts) await context.close();
  }
});

test("two demo pages see each other's messages and superlikes", async () => {
  const recorded = await recordedContext(browser);
  const { context } = recorded;
  try {
    const streamId = await newStream(demo.token("carol"), "Carol's cooking stream");
    await say(demo.token("carol"), streamId, "Welcome! Today: menemen.");
    const alice = await context.newPage();
    const bob = await context.newPage();
    await alice.goto(`${BASE_URL}/demo#user=alice&stream=${streamId}`);
    await bob.goto(`${BASE_URL}/demo#user=bob&stream=${streamId}`);
    for (const page of [alice, bob]) await waitForStatus(page, "live");

    await alice.fill("#content", "Hi Bob, are you watching too?");
    await alice.click("#send");
    await waitForShown(bob, "Hi Bob, are you watching too?");
    await bob.fill("#content", "Yes! Onions or no onions?");
    await bob.press("#content", "Enter");
    await waitForShown(alice, "Yes! Onions or no onions?");
    await bob.click("#superlike");
    await waitForShown(alice, "★ superliked the stream");

    const expected = [
      "Welcome! Today: menemen.",
      "Hi Bob, are you watching too?",
      "Yes! Onions or no onions?",
      "★ superliked the stream",
    ];
    for (const page of [alice, bob]) assert.deepEqual(await shown(page), expected);
    assert.equal(await alice.inputValue("#content"), "");
    await screenshot(alice, "demo.png");
    assertClean(recorded);
  } finally {
    await context.close();
  }
});

test("a demo page whose connection drops resumes after the last message it showed", async () => {
  const proxy = await cuttableProxy();
  const recorded = await recordedContext(browser);
  const { context } = recorded;
  try {
    const sender = demo.token("bob");
    const streamId = await newStream(sender, "Drop test");
    await say(sender, streamId, "0");
    // The page reaches the app through a proxy that can cut its connections.
    const page = await context.newPage();
    await page.goto(`${proxy.url}/demo#user=carol&stream=${streamId}`);
    await waitForStatus(page, "live");

    await say(sender, streamId, "1");
    await waitForShown(page, "1");
    proxy.cut();
    await waitForStatus(page, "reconnecting");
    await say(sender, streamId, "2");
    await say(sender, streamId, "3");
    proxy.restore();
    await waitForShown(page, "3");
    await waitForStatus(page, "live");
    await say(sender, streamId, "4");
    await waitForShown(page, "4");

    // 0 from the history, 1 live, 2 and 3 replayed after 1 on reconnecting, 4 live again.
    assert.deepEqual(await shown(page), ["0", "1", "2", "3", "4"]);
    // While the proxy refused connections, the browser logged the failed websocket attempts.
    assertClean(recorded, { origins: [proxy.url], expected: /^WebSocket connection to .* failed/ });
  } finally {
    await context.close();
    await proxy.close();
  }
});
