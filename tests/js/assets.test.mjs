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
    await promisify(execFile)(process.execPath, [path.join(root, "frontend", "build.mjs"), "--outdir", outdir]);
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
