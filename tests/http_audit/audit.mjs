// Runs graphql-http's GraphQL-over-HTTP audit against a live server and prints the results as
// JSON, one object per audit: {id, name, status, reason?}. status is "ok", or "error" (a MUST),
// "warn" (a SHOULD) or "notice" (a MAY) for an audit that failed.
//
//   GRAPHQL_URL=http://127.0.0.1:8000/graphql GRAPHQL_TOKEN=<jwt> node audit.mjs
//
// Every operation of this service needs a token, so each request the audit makes carries it in
// the Authorization header, as any client's would. GRAPHQL_HEADERS (a JSON object) adds more
// headers to every request, e.g. '{"GraphQL-Require-Preflight": "1"}', which the CSRF
// prevention asks of GET requests.
import { auditServer } from 'graphql-http';

const url = process.env.GRAPHQL_URL;
const token = process.env.GRAPHQL_TOKEN;
if (!url || !token) {
  console.error('usage: GRAPHQL_URL=<url> GRAPHQL_TOKEN=<jwt> [GRAPHQL_HEADERS=<json>] node audit.mjs');
  process.exit(2);
}
const extraHeaders = JSON.parse(process.env.GRAPHQL_HEADERS || '{}');

function fetchWithToken(input, init = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', token);
  for (const [name, value] of Object.entries(extraHeaders)) headers.set(name, value);
  return fetch(input, { ...init, headers });
}

const results = await auditServer({ url, fetchFn: fetchWithToken });
const report = await Promise.all(
  results.map(async (result) => {
    const entry = { id: result.id, name: result.name, status: result.status };
    if (result.status !== 'ok') {
      entry.reason = result.reason;
      entry.responseStatus = result.response.status;
      entry.responseBody = await result.response.text().catch(() => null);
    }
    return entry;
  }),
);
process.stdout.write(JSON.stringify(report, null, 2) + '\n');
