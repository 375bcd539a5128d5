// Build the pages the app serves in development into gql_api/static/ (committed, so installing
// the Python package needs no Node):
//
//   npm --prefix frontend ci && npm --prefix frontend run build
//
// graphiql.js/.css: GraphiQL, its toolkit, React and graphql-ws in one bundle; graphql-ws.js:
// the websocket client as an ES module; the demo page and resume.js are copied as they are.
// The output depends only on the sources and package-lock.json. `--outdir DIR` builds
// elsewhere (the tests compare such a build with the committed files); `--inputs FILE` writes
// the files bundled, as JSON (the tests check that no devDependency is among them).
import { copyFile, mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({ options: { outdir: { type: "string" }, inputs: { type: "string" } } });
const outdir = path.resolve(values.outdir ?? path.join(here, "..", "gql_api", "static"));
const src = (name) => path.join(here, "src", name);

const common = {
  bundle: true,
  minify: true,
  target: ["es2020"],
  legalComments: "eof",
  logLevel: "warning",
  define: { "process.env.NODE_ENV": '"production"' },
  loader: { ".woff2": "dataurl" },
  metafile: true,
};

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });
const builds = [
  await esbuild.build({
    ...common,
    entryPoints: { graphiql: src("graphiql.js") },
    format: "iife",
    outdir,
  }),
  await esbuild.build({
    ...common,
    entryPoints: { "graphql-ws": src("graphql-ws.js") },
    format: "esm",
    outdir,
  }),
];
if (values.inputs) {
  const inputs = builds.flatMap((result) => Object.keys(result.metafile.inputs));
  await writeFile(values.inputs, JSON.stringify([...new Set(inputs)].sort()));
}
for (const name of ["graphiql.html", "demo.html", "demo.js", "demo.css", "resume.js"]) {
  await copyFile(src(name), path.join(outdir, name));
}
