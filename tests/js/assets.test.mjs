// The files committed under gql_api/static are exactly what `npm --prefix frontend run build`
// makes from frontend/src and the lock file: a change to the sources without a rebuild fails here.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const committed = path.join(root, "gql_api", "static");

test("the committed static files are the build of frontend/", async () => {
  const outdir = await mkdtemp(path.join(tmpdir(), "gql-api-static-"));
  try {
    const inputs = path.join(tmpdir(), `${path.basename(outdir)}-inputs.json`);
    await promisify(execFile)(process.execPath, [
      path.join(root, "frontend", "build.mjs"), "--outdir", outdir, "--inputs", inputs,
    ]);
    // Test-only packages (Apollo Client, Playwright, ...) never reach what the app serves.
    const { devDependencies } = JSON.parse(await readFile(path.join(root, "frontend", "package.json"), "utf8"));
    const bundled = JSON.parse(await readFile(inputs, "utf8"));
    await rm(inputs);
    const packages = new Set(bundled.map((input) => input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/)?.[1]));
    assert.ok(packages.has("graphiql") && packages.has("graphql-ws"), [...packages].join(", "));
    assert.deepEqual(Object.keys(devDependencies).filter((name) => packages.has(name)), []);
    const built = (await readdir(outdir)).sort();
    assert.deepEqual((await readdir(committed)).sort(), built);
    for (const name of built) {
      const same = (await readFile(path.join(outdir, name))).equals(await readFile(path.join(committed, name)));
      assert.ok(same, `gql_api/static/${name} differs from a fresh build: run npm --prefix frontend run build`);
    }
  } finally {
    await rm(outdir, { recursive: true, force: true });
  }
});
