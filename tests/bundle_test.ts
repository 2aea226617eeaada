/**
 * The single-file build: `deno bundle` makes one JavaScript file that runs
 * the whole of vdeno, data plane worker included (`deno compile`, which
 * wraps the same module graph in an executable, needs a runtime download
 * that these machines cannot make).
 */

import assert from "node:assert/strict";
import { hostTest, Lan, run } from "./_harness.ts";

hostTest(
  "the bundled single file plugs a cloud that pings, and answers status",
  ["vde_plug"],
  async () => {
    const directory = await Deno.makeTempDir();
    const bundle = `${directory}/vdeno.js`;
    try {
      const main = new URL("../main.ts", import.meta.url).pathname;
      const built = await run([Deno.execPath(), "bundle", "--quiet", "--output", bundle, main], {
        timeoutMs: 300_000,
      });
      assert.equal(built.code, 0, built.stderr);
      assert.match(await Deno.readTextFile(bundle), /^#!\/usr\/bin\/env -S deno run/);
      const single = [Deno.execPath(), "run", "--allow-all", "--quiet", bundle];
      await using lan = await Lan.create(2);
      const [a, b] = lan.hosts;
      a.spawn([...single, "plug", "--name", "single", "tap://tap0", "vxvde://239.6.0.1"]);
      b.spawn(["vde_plug", "tap://tap0", "vxvde://239.6.0.1"]);
      for (const [i, host] of [a, b].entries()) {
        await host.waitForLink("tap0");
        await host.configure("tap0", `10.0.0.${i + 1}/24`);
      }
      assert.ok(await a.pingable("10.0.0.2"));
      const status = JSON.parse(await a.sh([...single, "status", "--json", "single"]));
      assert.ok(status.plugs[1].counters.framesIn > 0);
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
);
