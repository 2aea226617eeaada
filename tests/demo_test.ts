/** The README's main job: `vdeno demo` builds a cloud, pings across it, and leaves nothing behind. */

import assert from "node:assert/strict";
import { prerequisites, Process, run, VDENO } from "./_harness.ts";

async function demoNamespaces(pid: number): Promise<string[]> {
  const list = (await run(["ip", "netns", "list"])).stdout;
  return list.split("\n").map((line) => line.split(" ")[0]).filter((name) =>
    name.startsWith(`vdeno-demo-${pid}-`)
  );
}

Deno.test("vdeno demo shows every host pinging every other and removes what it built", async (t) => {
  if (!(await prerequisites(t, ["ping"]))) return;
  const child = new Deno.Command(VDENO[0], {
    args: [...VDENO.slice(1), "demo"],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = await child.output();
  const text = new TextDecoder().decode(output.stdout);
  assert.equal(output.code, 0, text + new TextDecoder().decode(output.stderr));
  assert.match(text, /Every host reaches every other/);
  assert.equal(text.match(/\d+(\.\d+)? ms/g)?.length, 6, "a 3x3 matrix of round-trip times");
  assert.deepEqual(await demoNamespaces(child.pid), []);
});

Deno.test("vdeno demo --keep stays up until Ctrl-C, then cleans up", async (t) => {
  if (!(await prerequisites(t, ["ping"]))) return;
  const command = new Deno.Command(VDENO[0], {
    args: [...VDENO.slice(1), "demo", "--keep", "--hosts", "2"],
    stdout: "piped",
    stderr: "piped",
  });
  await using demo = new Process(VDENO, command.spawn());
  await demo.waitForOutput((text) => text.includes("stays up until Ctrl-C"), 60_000);
  assert.equal((await demoNamespaces(demo.child.pid)).length, 3, "two hosts and the LAN");
  const status = await demo.stop("SIGINT");
  assert.equal(status.code, 0);
  assert.match(demo.stdout, /Removed every namespace/);
  assert.deepEqual(await demoNamespaces(demo.child.pid), []);
});
