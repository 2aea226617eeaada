/**
 * The rest of the VDE family, each against the C tool, from `vdeno plug` and
 * from `vdeno ns -m`: `vlan://` (vdeno's own, against libvdeplug-vlan; the tag on the wire is
 * checked in vdeplug_test.ts), `cmd://` (native) carrying a vde_plug, `hub://` and
 * `switch://` (libvdeplug's plugins) that vde_plug joins with vde://, and
 * `null://` (native) standing a switch up on its own.
 */

import assert from "node:assert/strict";
import { splitCommandLine } from "../plugs/cmd.ts";
import { type Host, hostTest, Lan, VDENO, waitUntil } from "./_harness.ts";

const A = "10.0.0.1", B = "10.0.0.2";

/**
 * Host `host` joins `vnl` as member 10.0.0.1, through `vdeno plug tap://` or
 * `vdeno ns -m`, and pings `peer`; resolves to whether a reply came.
 */
async function memberPings(
  host: Host,
  how: "plug" | "ns",
  vnl: string,
  peer: string,
): Promise<boolean> {
  if (how === "plug") {
    const plug = host.vdeno(["plug", "tap://tap0", vnl]);
    await host.waitForLink("tap0", 30_000, plug);
    await host.configure("tap0", `${A}/24`);
    return await host.pingable(peer, 40_000);
  }
  const script = `ip addr add ${A}/24 dev vde0 && ip link set vde0 up && ` +
    `for i in $(seq 40); do ping -c 1 -W 1 ${peer} >/dev/null && exit 0; done; exit 1`;
  const result = await host.run(
    [...VDENO, "ns", "-m", vnl, "--", "sh", "-c", script],
    { timeoutMs: 90_000 },
  );
  if (result.code !== 0) console.error(`vdeno ns -m ${vnl}: ${result.stdout}${result.stderr}`);
  return result.code === 0;
}

/** A vde_plug on host B with a TAP 10.0.0.2 on `vnl`. */
async function vdePlugPeer(host: Host, vnl: string): Promise<void> {
  host.spawn(["vde_plug", "tap://tap0", vnl]);
  await host.waitForLink("tap0");
  await host.configure("tap0", `${B}/24`);
}

async function withDirectory(body: (directory: string) => Promise<void>): Promise<void> {
  const directory = await Deno.makeTempDir({ prefix: "vdeno-family-" });
  try {
    await body(directory);
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
}

Deno.test("cmd:// splits its command line as a shell splits words", () => {
  assert.deepEqual(splitCommandLine("vde_plug vxvde://239.0.0.1"), [
    "vde_plug",
    "vxvde://239.0.0.1",
  ]);
  assert.deepEqual(splitCommandLine(`ssh  'a b' "c \\"d\\"" e\\ f ''`), [
    "ssh",
    "a b",
    'c "d"',
    "e f",
    "",
  ]);
  assert.throws(() => splitCommandLine("ssh 'host"), /Unterminated '/);
});

for (const how of ["plug", "ns"] as const) {
  hostTest(`cmd:// from vdeno ${how}: a vde_plug as the command reaches a vde_plug on the cloud`, [
    "vde_plug",
    "ping",
  ], async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await vdePlugPeer(b, "vxvde://239.7.7.7");
    assert.ok(
      await memberPings(a, how, "cmd://vde_plug 'vxvde://239.7.7.7'", B),
      "no reply through cmd://",
    );
  });

  hostTest(`vlan:// from vdeno ${how}: a vde_plug (libvdeplug-vlan) on the same VLAN answers`, [
    "vde_plug",
    "ping",
  ], async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    await vdePlugPeer(b, "vlan://7{vxvde://239.7.7.8}");
    assert.ok(await memberPings(a, how, "vlan://7{vxvde://239.7.7.8}", B), "no reply on VLAN 7");
  });

  for (const scheme of ["hub", "switch"]) {
    hostTest(
      `${scheme}:// from vdeno ${how} (libvdeplug's plugin): vde_plug joins it with vde://`,
      ["vde_plug", "ping"],
      async () => {
        await withDirectory(async (directory) => {
          await using lan = await Lan.create(2);
          const [a, b] = lan.hosts;
          const path = `${directory}/${scheme}`;
          const pinged = memberPings(a, how, `${scheme}://${path}`, B);
          await waitUntil(
            `${path}/ctl`,
            () => Deno.stat(`${path}/ctl`).then(() => true, () => false),
          );
          await vdePlugPeer(b, `vde://${path}`);
          assert.ok(await pinged, `no reply through ${scheme}://`);
        });
      },
    );
  }

  hostTest(`null:// from vdeno ${how}: with switch://, a switch that vde_plugs join`, [
    "vde_plug",
    "ping",
  ], async () => {
    await withDirectory(async (directory) => {
      await using lan = await Lan.create(2);
      const [a, b] = lan.hosts;
      const path = `${directory}/sw`;
      if (how === "plug") {
        a.vdeno(["plug", "null://", `switch://${path}`]);
      } else {
        // The namespace's vde0 sits on nothing; the switch is the second interface's network.
        a.vdeno(["ns", "-m", "null://", `switch://${path}`, "--", "sleep", "600"]);
      }
      await waitUntil(`${path}/ctl`, () => Deno.stat(`${path}/ctl`).then(() => true, () => false));
      await vdePlugPeer(b, `vde://${path}`);
      a.spawn(["vde_plug", "tap://tap0", `vde://${path}`]);
      await a.waitForLink("tap0");
      await a.configure("tap0", `${A}/24`);
      assert.ok(await a.pingable(B, 40_000), "the vde_plugs on the switch cannot ping");
    });
  });
}
