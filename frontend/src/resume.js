// Resume a subscription where it left off when graphql-ws reconnects.
//
// graphql-ws retries a dropped connection by itself and subscribes again with the payload it
// was first given, so a `messageAdded(streamId:, after:)` subscription resumes from its *first*
// `after`: messages already seen come again (or, with no `after`, those sent while offline are
// lost). `resumable(client)` wraps a graphql-ws client so that every (re)subscription carries the
// cursor of the last result delivered: the server replays what came after it, then goes live,
// and the subscriber sees each message once. Served by the app at /static/resume.js; no
// dependencies.
//
//   import { createClient } from "graphql-ws";
//   import { resumable } from "/static/resume.js";
//
//   const client = resumable(createClient({ url, connectionParams: { Authorization: token },
//                                           retryAttempts: Infinity }));
//   client.subscribe(
//     { query: "subscription ($s: ID!, $after: String) { messageAdded(streamId: $s, after: $after) { id cursor content } }",
//       variables: { s: streamId, after: lastCursorFromHistory } },
//     { next: (result) => show(result.data.messageAdded), error: console.error, complete() {} },
//   );
//
// It relies on graphql-ws serialising the payload object it was given each time it subscribes
// (it does, in versions 5 and 6): the wrapper hands it one whose `variables` are read at that
// moment.

/**
 * The cursor of a subscription result: the `cursor` of its first top-level field
 * (`{ data: { messageAdded: { cursor } } }`), or undefined when there is none.
 *
 * @param {{ data?: Record<string, unknown> | null }} result
 * @returns {string | undefined}
 */
export function firstFieldCursor(result) {
  const data = result && result.data;
  if (!data) return undefined;
  for (const value of Object.values(data)) {
    if (value && typeof value === "object" && typeof value.cursor === "string") return value.cursor;
  }
  return undefined;
}

/**
 * Wrap a graphql-ws client so that a subscription re-sent after a reconnect asks for what came
 * after the last result it delivered.
 *
 * Only operations that declare the variable (`$after` by default) are changed. `subscribe`
 * returns the same dispose function as graphql-ws; `on`, `dispose` and `terminate` are the
 * client's own; `iterate` is not wrapped. Use the wrapper wherever a graphql-ws client goes
 * (Apollo's GraphQLWsLink, urql's subscriptionExchange).
 *
 * @param {{ subscribe: Function, on?: Function, dispose?: Function, terminate?: Function }} client
 *   a client from graphql-ws's `createClient`
 * @param {{ variable?: string, cursor?: (result: any) => string | undefined }} [options]
 *   `variable`: the variable that carries the cursor (default `"after"`); `cursor`: how to read
 *   the cursor from a result (default: the `cursor` of the first top-level field)
 */
export function resumable(client, { variable = "after", cursor = firstFieldCursor } = {}) {
  const declares = new RegExp("\\$" + variable + "\\b");

  function subscribe(payload, sink) {
    if (!declares.test(String(payload.query))) return client.subscribe(payload, sink);
    let last;
    const base = payload.variables || {};
    const resumingPayload = {
      ...payload,
      // Read each time graphql-ws sends the subscription, so a resubscription carries the
      // cursor of the last result delivered rather than the one the subscription started with.
      get variables() {
        return last === undefined ? base : { ...base, [variable]: last };
      },
    };
    return client.subscribe(resumingPayload, {
      ...sink,
      next(result) {
        const seen = cursor(result);
        if (seen !== undefined) last = seen;
        sink.next(result);
      },
      error: (error) => sink.error(error),
      complete: () => sink.complete(),
    });
  }

  return {
    subscribe,
    on: (...args) => client.on(...args),
    dispose: () => client.dispose(),
    terminate: () => client.terminate(),
  };
}
