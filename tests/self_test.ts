/** app/self.ts: what vdeno knows about itself. */

import assert from "node:assert/strict";
import { V8_TUNING } from "../app/self.ts";

Deno.test("deno task compile builds with the V8 flags vdeno plug restarts with", () => {
  // deno.json cannot import app/self.ts: this test keeps its copy of the flags the same.
  const config = JSON.parse(
    Deno.readTextFileSync(new URL("../deno.json", import.meta.url)),
  ) as { tasks: Record<string, string> };
  const flags = /--v8-flags=(\S+)/.exec(config.tasks.compile)?.[1];
  assert.equal(flags, V8_TUNING);
});
