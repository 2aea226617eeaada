/**
 * `vde://`: vdeplug4's syntax for a vde_switch port, and one line when no
 * switch is there. The switch itself, with a VM on it, is in cloud_test.ts.
 */

import assert from "node:assert/strict";
import { parseVde } from "../plugs/vde.ts";
import { VnlError } from "../core/vnl.ts";
import { hostTest, Lan, run, sleep, VDENO } from "./_harness.ts";

Deno.test("vde:// takes a switch directory, then a port or group and options in brackets", () => {
  assert.deepEqual(parseVde(""), { path: "", port: 0, mode: 0o700 });
  assert.deepEqual(parseVde("/tmp/sw"), { path: "/tmp/sw", port: 0, mode: 0o700 });
  assert.deepEqual(parseVde("/tmp/sw[3]"), { path: "/tmp/sw", port: 3, mode: 0o700 });
  assert.deepEqual(parseVde("/tmp/sw[0]"), { path: "/tmp/sw", port: -1, mode: 0o700 });
  assert.deepEqual(parseVde("/tmp/sw[lan]"), {
    path: "/tmp/sw",
    portGroup: "lan",
    port: 0,
    mode: 0o700,
  });
  assert.deepEqual(parseVde("sw[port=7/mode=0770]"), { path: "sw", port: 7, mode: 0o770 });
  assert.deepEqual(parseVde("'/tmp/a[b'[2]"), { path: "/tmp/a[b", port: 2, mode: 0o700 });
  assert.throws(() => parseVde("/tmp/sw[colour=red]"), VnlError);
  assert.throws(() => parseVde("/tmp/sw[mode=9]"), VnlError);
  assert.throws(() => parseVde("/tmp/sw[3"), VnlError);
});

Deno.test("vde:// with no switch there says so in one line", async () => {
  const directory = await Deno.makeTempDir({ prefix: "vdeno-noswitch-" });
  try {
    const result = await run([...VDENO, "plug", `vde://${directory}`, "vxvde://239.0.0.1"]);
    assert.equal(result.code, 1, result.stderr);
    assert.match(
      result.stderr,
      /^vdeno plug: Cannot open vde:\/\/.*: no vde_switch answers: .*No such file or directory\n$/,
    );
    assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
});

/** vdeno with only the permissions of its design. */
const TWO_FLAGS = [
  Deno.execPath(),
  "run",
  "--allow-net",
  "--allow-ffi",
  "--quiet",
  new URL("../main.ts", import.meta.url).pathname,
];

for (const [how, vnl] of [["native", "vde://"], ["libvdeplug", "vdeplug://vde://"]] as const) {
  hostTest(`vde:// (${how}), with only --allow-net --allow-ffi, ends when the switch goes away`, [
    "vde_switch",
  ], async () => {
    const directory = await Deno.makeTempDir({ prefix: "vdeno-switch-" });
    try {
      await using lan = await Lan.create(1);
      const [host] = lan.hosts;
      await host.sh(["vde_switch", "-s", `${directory}/sw`, "-d", "-p", `${directory}/pid`]);
      await waitUntil(() => exists(`${directory}/sw/ctl`));
      const plug = host.spawn([...TWO_FLAGS, "plug", `${vnl}${directory}/sw`, "null://"]);
      // The switch binds a data socket per port once the plug is on.
      await waitUntil(() =>
        [...Deno.readDirSync(`${directory}/sw`)].some((entry) => /^\d+\.\d+$/.test(entry.name))
      );
      await host.sh(["kill", (await Deno.readTextFile(`${directory}/pid`)).trim()]);
      const status = await Promise.race([plug.exited(), sleep(15_000).then(() => undefined)]);
      assert.ok(status, `vdeno plug ${vnl} still runs after its switch ended`);
      assert.equal(status.code, 0, plug.stderr);
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  });
}

function exists(path: string): Promise<boolean> {
  return Deno.stat(path).then(() => true, () => false);
}

async function waitUntil(probe: () => boolean | Promise<boolean>, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error("Timed out");
    await sleep(100);
  }
}
