// Apollo Client 4, as chat frontends use it, in Node: queries over HTTP, subscriptions over
// GraphQLWsLink (graphql-ws, wrapped by resume.js), an InMemoryCache with relayStylePagination
// on chatMessages. GQL_API_RENAMED (from tests/test_frontend.py) names a user renamed after
// creating a stream and sending a message in it: {"token", "streamId", "userId", "oldName", "newName"}.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { resumable } from "../../frontend/src/resume.js";
import { BASE_URL, WebSocket, createClient, demoData, frontendRequire, newStream, say } from "./support.mjs";

const { OperationTypeNode } = frontendRequire("graphql");
const { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } = frontendRequire("@apollo/client");
const { GraphQLWsLink } = frontendRequire("@apollo/client/link/subscriptions");
const { relayStylePagination } = frontendRequire("@apollo/client/utilities");
const { loadDevMessages, loadErrorMessages } = frontendRequire("@apollo/client/dev");

loadDevMessages();
loadErrorMessages();

const SENDER = "sender { userId username name }";
const HISTORY = gql`
  query History($s: ID!, $first: Int, $after: String, $last: Int, $before: String) {
    chatMessages(streamId: $s, first: $first, after: $after, last: $last, before: $before) {
      edges { cursor node { id content cursor ${SENDER} } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
`;
const MESSAGE_ADDED = gql`
  subscription MessageAdded($s: ID!, $after: String) {
    messageAdded(streamId: $s, after: $after) { id content cursor ${SENDER} }
  }
`;

let demo;
let warnings;
const { warn, error } = console;

before(async () => {
  demo = await demoData();
});

// Apollo reports cache problems (such as data lost when an unnormalised object is replaced) as
// console warnings and errors, not exceptions: each test fails on any.
function recordConsole() {
  warnings = [];
  console.warn = (...args) => warnings.push(args.join(" "));
  console.error = (...args) => warnings.push(args.join(" "));
}

function restoreConsole() {
  console.warn = warn;
  console.error = error;
}

after(restoreConsole);

/** An Apollo client as `token`'s user; `connections()`: how many websockets graphql-ws opened. */
function apollo(token) {
  let connections = 0;
  const wsClient = resumable(
    createClient({
      url: `${BASE_URL.replace("http", "ws")}/graphql`,
      webSocketImpl: WebSocket,
      connectionParams: { Authorization: token },
      on: { connected: () => (connections += 1) },
    }),
  );
  const link = ApolloLink.split(
    ({ operationType }) => operationType === OperationTypeNode.SUBSCRIPTION,
    new GraphQLWsLink(wsClient),
    new HttpLink({ uri: `${BASE_URL}/graphql`, headers: { Authorization: token } }),
  );
  const cache = new InMemoryCache({
    typePolicies: {
      Query: { fields: { chatMessages: relayStylePagination(["streamId"]) } },
      // A snapshot has no identity of its own: merge it within its message, never across them.
      UserSnapshot: { merge: true },
    },
  });
  const client = new ApolloClient({ link, cache });
  return {
    client,
    connections: () => connections,
    async close() {
      client.stop();
      await wsClient.dispose();
    },
  };
}

/** Watch `observable` and resolve with its first complete result that satisfies `ready`. */
function watchUntil(observable, ready) {
  return new Promise((resolve, reject) => {
    const subscription = observable.subscribe({
      next: (result) => {
        if (result.error) reject(result.error);
        else if (result.dataState === "complete" && ready(result.data)) {
          resolve(result.data);
          queueMicrotask(() => subscription.unsubscribe());
        }
      },
      error: reject,
    });
  });
}

const contents = (data) => data.chatMessages.edges.map((edge) => edge.node.content);

test("relayStylePagination merges history pages read backwards (last/before) and forwards (first/after)", async () => {
  recordConsole();
  const token = demo.token("alice");
  const streamId = await newStream(token, "apollo pages");
  for (const n of [0, 1, 2, 3, 4]) await say(token, streamId, `m${n}`);
  const backwards = apollo(token);
  const forwards = apollo(token);
  try {
    // Backwards, as a chat shows it: the newest page, then older ones scrolling up.
    const newest = backwards.client.watchQuery({ query: HISTORY, variables: { s: streamId, last: 2 } });
    let data = await watchUntil(newest, () => true);
    assert.deepEqual(contents(data), ["m3", "m4"]);
    assert.equal(data.chatMessages.pageInfo.hasPreviousPage, true);
    await newest.fetchMore({ variables: { last: 2, before: data.chatMessages.pageInfo.startCursor } });
    data = newest.getCurrentResult().data;
    assert.deepEqual(contents(data), ["m1", "m2", "m3", "m4"]);
    await newest.fetchMore({ variables: { last: 2, before: data.chatMessages.pageInfo.startCursor } });
    data = newest.getCurrentResult().data;
    assert.deepEqual(contents(data), ["m0", "m1", "m2", "m3", "m4"]);
    assert.equal(data.chatMessages.pageInfo.hasPreviousPage, false);

    // Forwards from the oldest, in another client's cache.
    const oldest = forwards.client.watchQuery({ query: HISTORY, variables: { s: streamId, first: 3 } });
    data = await watchUntil(oldest, () => true);
    assert.deepEqual(contents(data), ["m0", "m1", "m2"]);
    await oldest.fetchMore({ variables: { first: 3, after: data.chatMessages.pageInfo.endCursor } });
    data = oldest.getCurrentResult().data;
    assert.deepEqual(contents(data), ["m0", "m1", "m2", "m3", "m4"]);
    assert.equal(data.chatMessages.pageInfo.hasNextPage, false);
  } finally {
    await backwards.close();
    await forwards.close();
    restoreConsole();
  }
  assert.deepEqual(warnings, []);
});

/**
 * Show the history, then follow the stream with subscribeToMore after its last message, appending
 * each delivered message to the paginated list, as a chat view does.
 */
function follow(observable, streamId, data) {
  return observable.subscribeToMore({
    document: MESSAGE_ADDED,
    variables: { s: streamId, after: data.chatMessages.pageInfo.endCursor },
    updateQuery: (previous, { subscriptionData }) => {
      const message = subscriptionData.data.messageAdded;
      const edge = { __typename: "ChatMessageEdge", cursor: message.cursor, node: message };
      return {
        chatMessages: {
          ...previous.chatMessages,
          edges: [...previous.chatMessages.edges, edge],
          pageInfo: { ...previous.chatMessages.pageInfo, endCursor: message.cursor },
        },
      };
    },
    onError: (error) => assert.fail(`subscription failed: ${error.message}`),
  });
}

test("GraphQLWsLink delivers live messages into the paginated history (subscribeToMore)", async () => {
  recordConsole();
  const token = demo.token("bob");
  const streamId = await newStream(token, "apollo live");
  await say(token, streamId, "h0");
  await say(token, streamId, "h1");
  const { client, connections, close } = apollo(token);
  try {
    const history = client.watchQuery({ query: HISTORY, variables: { s: streamId, last: 10 } });
    const data = await watchUntil(history, () => true);
    assert.deepEqual(contents(data), ["h0", "h1"]);
    const live = watchUntil(history, (d) => d.chatMessages.edges.length === 4);
    follow(history, streamId, data);
    await say(demo.token("alice"), streamId, "l0");
    await say(token, streamId, "l1");
    const seen = await live;
    assert.deepEqual(contents(seen), ["h0", "h1", "l0", "l1"]);
    assert.deepEqual(
      seen.chatMessages.edges.map((edge) => edge.node.sender.username),
      ["bob", "bob", "alice", "bob"],
    );
    assert.equal(connections(), 1); // the subscription went over graphql-ws, the query did not
  } finally {
    await close();
    restoreConsole();
  }
  assert.deepEqual(warnings, []);
});

test("a message keeps the sender's name from when it was sent, beside a newer one in the same cache", async () => {
  recordConsole();
  const renamed = JSON.parse(process.env.GQL_API_RENAMED ?? "null");
  assert.ok(renamed, "GQL_API_RENAMED is not set: run this through tests/test_frontend.py");
  const { client, close } = apollo(renamed.token);
  try {
    // The history holds the message sent before the rename; the user (now renamed) sends
    // another, which the subscription delivers into the same list.
    const history = client.watchQuery({ query: HISTORY, variables: { s: renamed.streamId, last: 10 } });
    const data = await watchUntil(history, () => true);
    assert.deepEqual(contents(data), ["before the rename"]);
    const live = watchUntil(history, (d) => d.chatMessages.edges.length === 2);
    follow(history, renamed.streamId, data);
    await say(renamed.token, renamed.streamId, "after the rename");
    const senders = (await live).chatMessages.edges.map((edge) => edge.node.sender);
    assert.deepEqual(
      senders.map(({ userId, name }) => ({ userId, name })),
      [
        { userId: renamed.userId, name: renamed.oldName },
        { userId: renamed.userId, name: renamed.newName },
      ],
    );
    // Each snapshot lives inside its message; nothing is stored under the user's identity.
    const keys = Object.keys(client.cache.extract());
    assert.deepEqual(keys.filter((key) => key.includes(renamed.userId)), []);
  } finally {
    await close();
    restoreConsole();
  }
  assert.deepEqual(warnings, []);
});

test("selecting the deprecated sender.id brings the merge back: why the schema says to select userId", async () => {
  recordConsole();
  const renamed = JSON.parse(process.env.GQL_API_RENAMED ?? "null");
  const { client, close } = apollo(renamed.token);
  try {
    const { data } = await client.query({
      query: gql`
        query OldStyle($s: ID!) {
          chatMessages(streamId: $s, first: 2) { edges { node { id content sender { id name } } } }
        }
      `,
      variables: { s: renamed.streamId },
    });
    // The server sent each message's own snapshot, but Apollo stored both as one
    // UserSnapshot:<id>, so both messages show the same name and one of them is wrong.
    assert.deepEqual(contents(data), ["before the rename", "after the rename"]);
    const names = data.chatMessages.edges.map((edge) => edge.node.sender.name);
    assert.equal(names[0], names[1]);
    assert.ok(`UserSnapshot:${renamed.userId}` in client.cache.extract());
  } finally {
    await close();
    restoreConsole();
  }
  assert.deepEqual(warnings, []);
});

test("a stream's owner is a snapshot too: it never overwrites the caller's `me` in the cache", async () => {
  recordConsole();
  const renamed = JSON.parse(process.env.GQL_API_RENAMED ?? "null");
  const { client, close } = apollo(renamed.token);
  const ME = gql`query Me { me { id name } }`;
  try {
    // The renamed user owns the stream: its owner snapshot still has the name from its creation.
    const me = await client.query({ query: ME });
    assert.equal(me.data.me.name, renamed.newName);
    const { data } = await client.query({
      query: gql`query Stream($s: ID!) { liveStream(id: $s) { id owner { userId name } } }`,
      variables: { s: renamed.streamId },
    });
    assert.deepEqual(
      { userId: data.liveStream.owner.userId, name: data.liveStream.owner.name },
      { userId: renamed.userId, name: renamed.oldName },
    );
    // Even a document that selects the deprecated `owner { id }` cannot reach `User:<id>`:
    // the snapshot's type is not `User`, so `me` keeps the current name.
    const old = await client.query({
      query: gql`query OldStream($s: ID!) { liveStream(id: $s) { id owner { id name } } }`,
      variables: { s: renamed.streamId },
    });
    assert.equal(old.data.liveStream.owner.name, renamed.oldName);
    assert.equal(client.readQuery({ query: ME }).me.name, renamed.newName);
    assert.equal(client.cache.extract()[`User:${renamed.userId}`].name, renamed.newName);
  } finally {
    await close();
    restoreConsole();
  }
  assert.deepEqual(warnings, []);
});
