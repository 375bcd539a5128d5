// The live chat demo page: history, live messages, sending, superlikes, and resuming after a
// dropped connection with the last cursor seen (resume.js). No framework; every request goes to
// the app that served the page.
//
// Who and where, from the URL fragment or the development endpoint:
//   /demo                       the demo stream, as alice (tokens from GET demo/data)
//   /demo#user=bob              the demo stream, as bob
//   /demo#stream=<id>&token=<t> any stream, with any token (nothing is fetched for it)
import { createClient } from "./graphql-ws.js";
import { resumable } from "./resume.js";

const MESSAGE_FIELDS = "id kind content cursor createdAt sender { userId username }";
const HISTORY = `query History($streamId: ID!) {
  liveStream(id: $streamId) { id title status superlikeCount }
  chatMessages(streamId: $streamId, last: 50) {
    edges { node { ${MESSAGE_FIELDS} } }
    pageInfo { endCursor }
  }
}`;
const MESSAGES = `subscription Messages($streamId: ID!, $after: String) {
  messageAdded(streamId: $streamId, after: $after) { ${MESSAGE_FIELDS} }
}`;
const SEND = `mutation Send($streamId: ID!, $content: String!, $clientMessageId: String) {
  sendChatMessage(streamId: $streamId, content: $content, clientMessageId: $clientMessageId) { id }
}`;
const SUPERLIKE = `mutation Superlike($streamId: ID!) { sendSuperlike(streamId: $streamId) { id } }`;

const $ = (id) => document.getElementById(id);
const graphqlUrl = new URL("graphql", window.location.href);
const websocketUrl = new URL(graphqlUrl);
websocketUrl.protocol = graphqlUrl.protocol === "https:" ? "wss:" : "ws:";

/** Tokens by user name, from the fragment or the development endpoint. */
let tokens = {};
/** The current session: what `join` opened, closed by the next `join`. */
let session = null;

class ApiError extends Error {
  constructor(error) {
    super(error.message);
    this.code = error.extensions && error.extensions.code;
  }
}

async function graphql(token, query, variables) {
  const response = await fetch(graphqlUrl, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: token },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors && body.errors.length) throw new ApiError(body.errors[0]);
  return body.data;
}

function newId() {
  // randomUUID needs a secure context; a page on a LAN address over http is not one.
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function showError(error) {
  const element = $("error");
  element.hidden = !error;
  element.textContent = error ? (error.code ? `${error.code}: ${error.message}` : String(error.message || error)) : "";
}

function render(message, me) {
  const item = document.createElement("li");
  item.dataset.id = message.id;
  item.dataset.cursor = message.cursor;
  item.classList.toggle("mine", message.sender.userId === me);
  item.classList.toggle("superlike", message.kind === "SUPERLIKE");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.sender.username;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.kind === "SUPERLIKE" ? "★ superliked the stream" : message.content;
  const time = document.createElement("time");
  time.dateTime = message.createdAt;
  time.textContent = new Date(message.createdAt).toLocaleTimeString();
  item.append(who, text, time);
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
}

function setComposing(enabled) {
  for (const id of ["content", "send", "superlike"]) $(id).disabled = !enabled;
}

async function join(streamId, token) {
  if (session) session.close();
  const current = { closed: false, close() {} };
  session = current;
  $("messages").replaceChildren();
  showError(null);
  setComposing(false);
  setStatus("connecting", "loading…");

  const me = (await graphql(token, "{ me { id } }")).me.id;
  const data = await graphql(token, HISTORY, { streamId });
  if (current.closed) return;
  if (!data.liveStream) throw new ApiError({ message: `No stream ${streamId}`, extensions: { code: "NOT_FOUND" } });
  $("title").textContent = `${data.liveStream.title} (${data.liveStream.status})`;
  for (const edge of data.chatMessages.edges) render(edge.node, me);

  const client = resumable(
    createClient({
      url: websocketUrl.toString(),
      connectionParams: { Authorization: token },
      retryAttempts: Infinity,
      // graphql-ws retries only close events by default, not a refused connection (an error
      // event); a token the server rejects (4403: expired) will not get better by retrying.
      shouldRetry: (event) => event.code !== 4403,
      // Back off 0.5 s, 1 s, 2 s… up to 5 s, with jitter so a restarted server is not stampeded.
      retryWait: (retries) =>
        new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * 2 ** retries) * (0.75 + Math.random() / 2))),
      on: {
        connecting: () => setStatus("connecting", "connecting…"),
        connected: () => setStatus("live", "live"),
        closed: () => current.closed || setStatus("reconnecting", "reconnecting…"),
      },
    }),
  );
  const dispose = client.subscribe(
    // Everything after the last message of the history, then live; after a reconnect, everything
    // after the last message shown (resume.js), so nothing is missed or shown twice.
    { query: MESSAGES, variables: { streamId, after: data.chatMessages.pageInfo.endCursor } },
    {
      next: (result) => {
        if (result.errors) showError(new ApiError(result.errors[0]));
        else render(result.data.messageAdded, me);
      },
      error: (error) => {
        setStatus("idle", "disconnected");
        showError(error instanceof Error ? error : new Error(error.reason || "subscription failed"));
      },
      complete: () => {
        setStatus("ended", "stream ended");
        setComposing(false);
      },
    },
  );
  current.close = () => {
    current.closed = true;
    dispose();
    client.dispose();
  };
  current.streamId = streamId;
  current.token = token;
  setComposing(data.liveStream.status === "LIVE");
}

async function send(event) {
  event.preventDefault();
  const input = $("content");
  const content = input.value.trim();
  if (!session || !content) return;
  try {
    await graphql(session.token, SEND, { streamId: session.streamId, content, clientMessageId: newId() });
    input.value = "";
    showError(null);
  } catch (error) {
    showError(error); // the text stays in the box, to send again
  }
}

async function superlike() {
  if (!session) return;
  try {
    await graphql(session.token, SUPERLIKE, { streamId: session.streamId });
    showError(null);
  } catch (error) {
    showError(error);
  }
}

function start(event) {
  if (event) event.preventDefault();
  const token = tokens[$("user").value];
  const streamId = $("stream").value.trim();
  if (!token || !streamId) return;
  join(streamId, token).catch((error) => {
    setStatus("idle", "not connected");
    showError(error);
  });
}

async function main() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  if (fragment.get("token")) {
    tokens = { "token from the URL": fragment.get("token") };
    $("stream").value = fragment.get("stream") || "";
    $("hint").textContent = "Using the token from the URL fragment.";
  } else {
    const response = await fetch(new URL("demo/data", window.location.href));
    if (!response.ok) throw new Error(`demo data: HTTP ${response.status}`);
    const demo = await response.json();
    tokens = Object.fromEntries(Object.entries(demo.users).map(([name, user]) => [name, user.token]));
    $("stream").value = fragment.get("stream") || demo.streamId;
    $("hint").textContent = "Signed in with the demo users' tokens (gql-api demo). Open a second tab as someone else.";
  }
  for (const name of Object.keys(tokens)) $("user").append(new Option(name, name));
  if (fragment.get("user") in tokens) $("user").value = fragment.get("user");
  $("join").addEventListener("submit", start);
  $("composer").addEventListener("submit", send);
  $("superlike").addEventListener("click", superlike);
  start();
}

main().catch((error) => showError(error));
