// The benchmark's JavaScript peer: graphql-js executed by graphql-http (queries and mutations over
// HTTP) and graphql-ws on the `ws` package (subscriptions), with the in-memory PubSub of
// graphql-subscriptions, written the way those libraries' documentation shows it.
//
// It serves the same operations, types and field names as bench/baseline.py (the Strawberry
// baseline): `messageAdded(streamId)`, `sendChatMessage(streamId, content, clientMessageId)` and
// `chatMessages(streamId, last)`, with the same in-memory storage (no database, which favours it)
// and the same authentication: a HS256 JWT (`sub`, `exp`, `iat`) in the `Authorization` header or
// the `connection_init` payload, verified with `jsonwebtoken`, naming one of the users given in
// BENCH_USERS_FILE.
//
// Run by bench/run.py: `node bench/node_peer/server.js --port PORT` with BENCH_JWT_SECRET,
// BENCH_USERS_FILE (a JSON file: id -> {username, name, surname}) and BENCH_STREAM_ID in the
// environment. permessage-deflate is enabled as uvicorn enables it for the Python servers: used
// when the client offers it (bench/run.py --compression), with ws's defaults (context takeover,
// so every frame is compressed, as websockets does for the Python servers).

import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import { GraphQLError, buildSchema } from 'graphql';
import { createHandler } from 'graphql-http';
import { PubSub } from 'graphql-subscriptions';
import { useServer } from 'graphql-ws/use/ws';
import jwt from 'jsonwebtoken';
import { WebSocketServer } from 'ws';

const HISTORY_LIMIT = 10_000;

// The same types and field names as the project (gql_api/graphql/types.py) and the baseline.
const schema = buildSchema(`
  scalar DateTime

  enum MessageKind { TEXT SUPERLIKE }

  type PhotoVariant { size: String! url: String! }

  type ProfilePhoto {
    id: ID!
    url: String!
    type: String!
    variants: [PhotoVariant!]!
    createdAt: DateTime!
    updatedAt: DateTime!
  }

  type User {
    id: ID!
    username: String!
    name: String!
    surname: String!
    profilePhoto: ProfilePhoto
    availabilityStatus: String!
  }

  type ChatMessage {
    id: ID!
    streamId: ID!
    kind: MessageKind!
    content: String!
    sender: User!
    createdAt: DateTime!
    updatedAt: DateTime!
    clientMessageId: String
    cursor: String!
  }

  type PageInfo {
    hasNextPage: Boolean!
    hasPreviousPage: Boolean!
    startCursor: String
    endCursor: String
  }

  type ChatMessageEdge { cursor: String! node: ChatMessage! }

  type ChatMessageConnection { edges: [ChatMessageEdge!]! pageInfo: PageInfo! }

  type Query { chatMessages(streamId: ID!, last: Int! = 50): ChatMessageConnection! }

  type Mutation {
    sendChatMessage(streamId: ID!, content: String!, clientMessageId: String): ChatMessage!
  }

  type Subscription { messageAdded(streamId: ID!): ChatMessage! }
`);

const { values: args } = parseArgs({
  options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '8002' } },
});
const secret = process.env.BENCH_JWT_SECRET;
const users = new Map(
  Object.entries(JSON.parse(readFileSync(process.env.BENCH_USERS_FILE, 'utf8'))).map(([id, profile]) => [
    id,
    { id, ...profile, profilePhoto: null, availabilityStatus: 'available' },
  ]),
);
const seqs = new Map([[process.env.BENCH_STREAM_ID, 0]]);
const history = new Map([[process.env.BENCH_STREAM_ID, []]]);

// One EventEmitter listener per subscription: thousands of them on one stream are expected.
const emitter = new EventEmitter();
emitter.setMaxListeners(0);
const pubsub = new PubSub({ eventEmitter: emitter });

function authenticate(header) {
  if (typeof header !== 'string' || !header) {
    throw new GraphQLError('Authentication required');
  }
  let claims;
  try {
    claims = jwt.verify(header.replace(/^Bearer /, '').trim(), secret, { algorithms: ['HS256'] });
  } catch {
    throw new GraphQLError('Authentication required: the token is not valid');
  }
  if (typeof claims.sub !== 'string' || claims.exp === undefined || claims.iat === undefined) {
    throw new GraphQLError('Authentication required: the token is not valid');
  }
  const user = users.get(claims.sub);
  if (user === undefined) {
    throw new GraphQLError("Authentication required: the token's user does not exist");
  }
  return user;
}

function caller(context) {
  return context.user ?? authenticate(context.authorization);
}

function encodeCursor(seq) {
  return Buffer.from(`seq:${seq}`).toString('base64url');
}

function objectId() {
  // 4 bytes of seconds and 8 random bytes, shaped like a MongoDB ObjectId.
  const time = Math.floor(Date.now() / 1000).toString(16).padStart(8, '0');
  return time + randomBytes(8).toString('hex');
}

// Root resolvers: the default field resolver calls these with (args, context, info); a
// subscription's events are `{ messageAdded: message }`, as graphql-ws's documentation shows.
const rootValue = {
  chatMessages({ streamId, last }, context) {
    caller(context);
    const all = history.get(streamId) ?? [];
    const messages = all.slice(-last);
    const edges = messages.map((node) => ({ cursor: node.cursor, node }));
    return {
      edges,
      pageInfo: {
        hasNextPage: false,
        hasPreviousPage: all.length > edges.length,
        startCursor: edges.length ? edges[0].cursor : null,
        endCursor: edges.length ? edges[edges.length - 1].cursor : null,
      },
    };
  },

  async sendChatMessage({ streamId, content, clientMessageId }, context) {
    const sender = caller(context);
    if (!seqs.has(streamId)) {
      throw new GraphQLError('Resource not found: no live stream has this id');
    }
    const text = content.trim();
    if (text.length < 1 || text.length > 500) {
      throw new GraphQLError('Validation failed: `content` must be 1 to 500 characters after trimming');
    }
    const seq = seqs.get(streamId) + 1;
    seqs.set(streamId, seq);
    const now = new Date().toISOString(); // milliseconds and `Z`, as the project writes DateTime
    const message = {
      id: objectId(),
      streamId,
      kind: 'TEXT',
      content: text,
      sender,
      createdAt: now,
      updatedAt: now,
      clientMessageId: clientMessageId ?? null,
      cursor: encodeCursor(seq),
    };
    const stored = history.get(streamId);
    stored.push(message);
    if (stored.length > HISTORY_LIMIT) {
      stored.shift();
    }
    await pubsub.publish(`stream:${streamId}`, { messageAdded: message });
    return message;
  },

  messageAdded({ streamId }, context) {
    caller(context);
    return pubsub.asyncIterableIterator(`stream:${streamId}`);
  },
};

const graphqlHttp = createHandler({
  schema,
  rootValue,
  context: (req) => ({ authorization: req.raw.headers.authorization }),
});

// graphql-http's own Node adapter (graphql-http/lib/use/http) answers chunked; this one sends a
// Content-Length, as uvicorn does, which the load generator's minimal HTTP client needs.
async function handleGraphqlHttp(req, res) {
  const [body, init] = await graphqlHttp({
    url: req.url,
    method: req.method,
    headers: req.headers,
    body: () => new Promise((resolve) => {
      let text = '';
      req.setEncoding('utf-8');
      req.on('data', (chunk) => (text += chunk));
      req.on('end', () => resolve(text));
    }),
    raw: req,
    context: {},
  });
  const payload = Buffer.from(body ?? '');
  res.writeHead(init.status, init.statusText, { ...init.headers, 'content-length': payload.length });
  res.end(payload);
}

const server = createServer((req, res) => {
  if (new URL(req.url, 'http://localhost').pathname !== '/graphql') {
    res.writeHead(404, { 'content-length': 0 }).end();
    return;
  }
  handleGraphqlHttp(req, res).catch((err) => {
    console.error('internal error', err);
    res.writeHead(500, { 'content-length': 0 }).end();
  });
});

const wsServer = new WebSocketServer({ server, path: '/graphql', perMessageDeflate: true });

useServer(
  {
    schema,
    roots: { query: rootValue, mutation: rootValue, subscription: rootValue },
    onConnect(ctx) {
      const params = ctx.connectionParams ?? {};
      const key = Object.keys(params).find((name) => name.toLowerCase() === 'authorization');
      try {
        ctx.extra.user = authenticate(key === undefined ? undefined : params[key]);
      } catch {
        return false; // closes with 4403 Forbidden
      }
      return true;
    },
    context: (ctx) => ({ user: ctx.extra.user }),
  },
  wsServer,
);

function shutdown() {
  for (const client of wsServer.clients) {
    client.terminate();
  }
  wsServer.close();
  server.close(() => process.exit(0));
  server.closeAllConnections();
}

process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);

server.listen(Number(args.port), args.host, () => {
  console.log(`Node peer listening on http://${args.host}:${args.port} (node ${process.version})`);
});
