/**
 * The data path allocates nothing per frame (ARCHITECTURE.md, "The path of a
 * frame"): while a TCP stream crosses two plugs, with its super-frames cut
 * into segments on one side and its UDP GRO runs copied apart and merged on
 * the other, V8 has next to nothing to collect. Each plug runs with `--trace-gc`,
 * which prints a line per collection.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, VDENO } from "./_harness.ts";

/** Collections of V8's young generation that a `--trace-gc` output reports. */
function scavenges(output: string): number {
  return output.match(/Scavenge/g)?.length ?? 0;
}

hostTest(
  "a TCP stream through two plugs has V8 collect nothing: no allocation per frame on either side",
  ["iperf3", "ping", "stdbuf"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    // V8 prints with C's stdio, which holds a pipe's output in its buffer: stdbuf makes it a line.
    const plugs = [a, b].map((host) =>
      host.spawn(["stdbuf", "-oL", ...VDENO, "plug", "tap://tap0", "vxvde://239.4.0.31"], {
        env: { DENO_V8_FLAGS: "--trace-gc" },
      })
    );
    for (const [i, host] of [a, b].entries()) {
      await host.waitForLink("tap0");
      await host.configure("tap0", `10.0.0.${i + 1}/24`);
    }
    assert.ok(await a.pingable("10.0.0.2"));
    const server = b.spawn(["iperf3", "-s", "--forceflush"]);
    await server.waitForOutput((text) => text.includes("listening"));

    const stream = (bytes: string) =>
      a.run(["iperf3", "-c", "10.0.0.2", "-n", bytes, "-J"], { timeoutMs: 120_000 });
    // A first stream has V8 compile what the warm-up did not reach; that allocates.
    await stream("300M");
    const started = plugs.map((plug) => scavenges(plug.stdout));
    assert.ok(started[0] > 0 && started[1] > 0, "each plug's --trace-gc output is seen (start-up)");
    // Allocating per frame collects in every stream alike: a number boxed per frame for a call V8
    // did not inline made 3 to 9 collections per 500 MB, one view made per datagram (commit
    // 20a61fc) 19. V8 itself may collect in one stream now and then: a function deoptimized by a
    // branch it had not met runs unoptimized until compiled again, boxing numbers meanwhile. So
    // the quietest of three streams is judged.
    const collections: number[][] = [[], []];
    for (let round = 0; round < 3; round++) {
      const before = plugs.map((plug) => scavenges(plug.stdout));
      const client = await stream("500M");
      const after = plugs.map((plug) => scavenges(plug.stdout));
      assert.equal(client.code, 0, `iperf3: ${client.stdout.slice(-500)}`);
      assert.ok(JSON.parse(client.stdout).end.sum_received.bytes >= 450 * 1024 * 1024);
      for (let i = 0; i < 2; i++) collections[i].push(after[i] - before[i]);
    }
    for (const [i, side] of ["sending", "receiving"].entries()) {
      assert.ok(
        Math.min(...collections[i]) <= 1,
        `the ${side} plug's heap was collected ${collections[i].join(", ")} times ` +
          "in three 500 MB streams",
      );
    }
  },
);
