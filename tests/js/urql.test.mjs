// urql (@urql/core 6) with its default options: queries go as GET while the URL is short enough
// (`preferGetMethod: "within-url-limit"`), which the API's CSRF prevention refuses without a
// preflight header. The refusal must say which header to send; with it, or with POST, the
// query runs.
import assert from "node:assert/strict";
import { before, test } from "node:test";

import { BASE_URL, demoData, frontendRequire } from "./support.mjs";

const { Client, cacheExchange, fetchExchange, gql } = frontendRequire("@urql/core");

const STREAM = gql`
  query Stream($id: ID!) {
    liveStream(id: $id) { id title status }
  }
`;

let demo;

before(async () => {
  demo = await demoData();
});

/**
 * An urql client as alice with `headers` added and `options` on top of urql's defaults;
 * `methods`: each request's HTTP method.
 */
function urql({ headers = {}, ...options } = {}) {
  const methods = [];
  const client = new Client({
    url: `${BASE_URL}/graphql`,
    exchanges: [cacheExchange, fetchExchange],
    fetchOptions: { headers: { Authorization: demo.token("alice"), ...headers } },
    fetch: (url, init) => {
      methods.push(init?.method ?? "GET");
      return fetch(url, init);
    },
    ...options,
  });
  return { client, methods };
}

test("urql's default GET query is refused, and the message names the header to send", async () => {
  const { client, methods } = urql();

  const result = await client.query(STREAM, { id: demo.streamId }).toPromise();

  assert.deepEqual(methods, ["GET"]);
  assert.equal(result.data, undefined);
  const [error] = result.error.graphQLErrors;
  assert.match(error.message, /Cross-Site Request Forgery/);
  assert.match(error.message, /'Apollo-Require-Preflight: true'/);
  assert.equal(error.extensions.code, "BAD_USER_INPUT");
});

test("the header from the message makes the same GET query run", async () => {
  const { client, methods } = urql({ headers: { "Apollo-Require-Preflight": "true" } });

  const result = await client.query(STREAM, { id: demo.streamId }).toPromise();

  assert.deepEqual(methods, ["GET"]);
  assert.equal(result.error, undefined);
  assert.equal(result.data.liveStream.id, demo.streamId);
});

test("preferGetMethod: false sends queries as JSON POSTs, which need no header", async () => {
  const { client, methods } = urql({ preferGetMethod: false });

  const result = await client.query(STREAM, { id: demo.streamId }).toPromise();

  assert.deepEqual(methods, ["POST"]);
  assert.equal(result.error, undefined);
  assert.equal(result.data.liveStream.status, "LIVE");
});
