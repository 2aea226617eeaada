/** The README's main job: `vdeno demo` builds a cloud, pings across it, and leaves nothing behind. */

import assert from "node:assert/strict";
import { hostTest, Process, requirements, run, VDENO } from "./_harness.ts";

async function demoNamespaces(pid: number): Promise<string[]> {
  const list = (await run(["ip", "netns", "list"])).stdout;
  return list.split("\n").map((line) => line.split(" ")[0]).filter((name) =>
    name.startsWith(`vdeno-demo-${pid}-`)
  );
}

function slirpInstalled(): boolean {
  try {
    Deno.statSync("/usr/lib/x86_64-linux-gnu/vdeplug/libvdeplug_slirp.so");
    return true;
  } catch {
    return false;
  }
}

hostTest(
  "vdeno demo shows every member, the VM and the gateway included, pinging every other and removes what it built",
  requirements(["ping", "qemu-system-x86_64", "busybox"], [
    { ok: slirpInstalled(), why: "libvdeplug-slirp is not installed" },
  ]),
  async () => {
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
  },
);

hostTest("vdeno demo --keep stays up until Ctrl-C, then cleans up", ["ping"], async () => {
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
