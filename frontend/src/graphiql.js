// GraphiQL for gql_api, bundled with everything it needs so the page makes no request to any
// other host. Queries and mutations are POSTed to the page's own URL; subscriptions go over a
// graphql-ws websocket to the same URL, with the Headers pane as the `connection_init` payload
// (so `{"Authorization": "<token>"}` authenticates both), as Strawberry's own page does.
import { createElement } from "react";
import { createRoot } from "react-dom/client";
import { GraphiQL } from "graphiql";
import { createGraphiQLFetcher } from "@graphiql/toolkit";
import "graphiql/graphiql.css";
import "./graphiql-page.css";

const DEFAULT_QUERY = `# GraphiQL for gql_api, served by the app itself (no CDN).
#
# 1. Put a token in the Headers pane below: {"Authorization": "<token>"}
#    (\`gql-api demo --json\` prints tokens for the demo users).
# 2. Run a query, a mutation, or a subscription: subscriptions use a websocket
#    and send the same headers as its connection_init payload.

query Me {
  me { id username name }
}
`;

const url = new URL(window.location.href);
url.search = "";
url.hash = "";
const subscriptionUrl = new URL(url);
subscriptionUrl.protocol = url.protocol === "https:" ? "wss:" : "ws:";

const fetcher = createGraphiQLFetcher({
  url: url.toString(),
  subscriptionUrl: subscriptionUrl.toString(),
});

createRoot(document.getElementById("graphiql")).render(
  createElement(GraphiQL, {
    fetcher,
    defaultQuery: DEFAULT_QUERY,
    defaultHeaders: '{"Authorization": ""}',
    defaultEditorToolsVisibility: "headers",
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: true,
    inputValueDeprecation: true,
  }),
);
