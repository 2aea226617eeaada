/**
 * `vdeno randmac` prints MACs a virtual NIC may own: unicast, locally
 * administered, and different each time.
 */

import assert from "node:assert/strict";
import { randomMac } from "../app/cli/randmac.ts";
import { run, VDENO } from "./_harness.ts";

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

Deno.test("randomMac gives locally administered unicast addresses, all different", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 1000; i++) {
    const mac = randomMac();
    assert.match(mac, MAC);
    const first = parseInt(mac.slice(0, 2), 16);
    assert.equal(first & 1, 0, `${mac} is a group address`);
    assert.equal(first & 2, 2, `${mac} is not locally administered`);
    seen.add(mac);
  }
  assert.equal(seen.size, 1000);
});

Deno.test("vdeno randmac prints one address and rejects arguments", async () => {
  const printed = await run([...VDENO, "randmac"]);
  assert.equal(printed.code, 0, printed.stderr);
  assert.match(printed.stdout.trim(), MAC);
  assert.equal(printed.stdout.split("\n").filter(Boolean).length, 1);
  const wrong = await run([...VDENO, "randmac", "extra"]);
  assert.equal(wrong.code, 2);
  assert.equal(wrong.stderr.trim().split("\n").length, 1, wrong.stderr);
});
