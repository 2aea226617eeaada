/**
 * `vxlan://` against the Linux kernel's VXLAN device and vdeplug4's
 * `vde_plug vxlan://`, on namespace hosts.
 */

import assert from "node:assert/strict";
import { captureUdp } from "./_capture.ts";
import { type Host, Lan, prerequisites, VDENO } from "./_harness.ts";

/** A name for `vdeno plug --name`, unique on this machine (control sockets are shared). */
function plugName(what: string): string {
  return `vxlan-${Deno.pid}-${what}`;
}

/** Adds a kernel VXLAN device to `host` on `group` (dstport 4789, by eth0) with `cidr` on it. */
async function kernelVxlan(host: Host, vni: number, group: string, cidr: string, mac?: string) {
  await host.sh([
    "ip",
    "link",
    "add",
    "vx0",
    "type",
    "vxlan",
    "id",
    String(vni),
    "group",
    group,
    "dstport",
    "4789",
    "dev",
    "eth0",
  ]);
  await host.configure("vx0", cidr, mac);
}

/** Starts `vdeno plug tap://tap0 VNL` on `host` and puts `cidr` on tap0. */
async function vdenoMember(host: Host, vnl: string, cidr: string, name?: string, mac?: string) {
  const plug = host.vdeno(["plug", ...(name ? ["--name", name] : []), "tap://tap0", vnl]);
  await host.waitForLink("tap0", 30_000, plug);
  await host.configure("tap0", cidr, mac);
  return plug;
}

Deno.test("vdeno vxlan:// and a kernel VXLAN device ping each other, then go by unicast to port 4789", async (t) => {
  if (!(await prerequisites(t, ["ping", "tcpdump"]))) return;
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  await vdenoMember(a, "vxlan://239.8.0.1/vni=42", "10.0.0.1/24");
  await kernelVxlan(b, 42, "239.8.0.1", "10.0.0.2/24");
  assert.ok(await a.pingable("10.0.0.2"), "vdeno cannot ping the kernel VXLAN device");
  assert.ok(await b.pingable("10.0.0.1"), "the kernel VXLAN device cannot ping vdeno");
  const datagrams = await captureUdp(a, "eth0", async () => {
    await a.sh(["ping", "-c", "5", "-i", "0.1", "10.0.0.2"]);
    await b.sh(["ping", "-c", "5", "-i", "0.1", "10.0.0.1"]);
  });
  // An echo request or reply (84 bytes of IPv4) in a frame, in VXLAN: 8 + 14 + 84 bytes.
  const echoes = datagrams.filter((d) => d.length === 106);
  const fromA = echoes.filter((d) => d.source.startsWith(`${a.address}.`));
  const fromB = echoes.filter((d) => d.source.startsWith(`${b.address}.`));
  assert.ok(fromA.length >= 10 && fromB.length >= 10, JSON.stringify(datagrams));
  // Once learned, each side sends to the other's address at the network's port, never the group.
  for (const d of fromA) assert.equal(d.destination, `${b.address}.4789`, JSON.stringify(d));
  for (const d of fromB) assert.equal(d.destination, `${a.address}.4789`, JSON.stringify(d));
});
