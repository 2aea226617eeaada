/** The README's main job: `vdeno demo` builds a cloud, pings across it, and leaves nothing behind. */

import assert from "node:assert/strict";
import { prerequisites, Process, run, VDENO } from "./_harness.ts";

async function demoNamespaces(pid: number): Promise<string[]> {
  const list = (await run(["ip", "netns", "list"])).stdout;
  return list.split("\n").map((line) => line.split(" ")[0]).filter((name) =>
    name.startsWith(`vdeno-demo-${pid}-`)
  );
}

const slirpInstalled = () =>
  Deno.stat("/usr/lib/x86_64-linux-gnu/vdeplug/libvdeplug_slirp.so").then(() => true, () => false);

Deno.test("vdeno demo shows every member, the VM and the gateway included, pinging every other and removes what it built", async (t) => {
  const ok = await prerequisites(t, ["ping", "qemu-system-x86_64", "busybox"], [
    { ok: await slirpInstalled(), why: "libvdeplug-slirp is not installed" },
  ]);
  if (!ok) return;
  const child = new Deno.Command(VDENO[0], {
    args: [...VDENO.slice(1), "demo"],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = await child.output();
  const text = new TextDecoder().decode(output.stdout);
  assert.equal(output.code, 0, text + new TextDecoder().decode(output.stderr));
  assert.match(text, /Every member reaches every other/);
  assert.match(text, /a TAP, vdeno plug tap:\/\/vde0/);
  assert.match(text, /the gateway, vdeno plug slirp:\/\/ vxvde:\/\/234\.0\.0\.1, 10\.0\.0\.254/);
  assert.match(
    text,
    /a namespace, vdeno ns vxvde:\/\/234\.0\.0\.1 \(vde0 10\.0\.0\.1\d\d\/24 by DHCP from the gateway\)/,
  );
  assert.match(text, /QEMU VM \(TCG\), -netdev vde,sock=vxvde:\/\/234\.0\.0\.1/);
  assert.equal(
    text.match(/\d+(\.\d+)? ms/g)?.length,
    12,
    "three hosts ping the gateway, each other and the VM",
  );
  assert.match(
    text,
    /10\.0\.0\.21\s+ok \(guest\)\s+ok \(guest\)\s+ok \(guest\)\s+ok \(guest\)\s+-/,
    "the VM pings the gateway and all three",
  );
  assert.deepEqual(await demoNamespaces(child.pid), []);
});

Deno.test("vdeno demo --keep stays up until Ctrl-C, then cleans up", async (t) => {
  if (!(await prerequisites(t, ["ping"]))) return;
  const command = new Deno.Command(VDENO[0], {
    args: [...VDENO.slice(1), "demo", "--keep", "--hosts", "2", "--no-vm", "--no-gateway"],
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
