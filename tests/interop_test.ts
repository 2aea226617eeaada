/**
 * vdeno and vdeplug4 on one vxvde network: pings both ways between namespace
 * hosts, over IPv4 and IPv6 groups.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan } from "./_harness.ts";

type Peer = "vdeno" | "vde_plug";

function startPlug(host: Host, peer: Peer, vnl: string) {
  return peer === "vdeno"
    ? host.vdeno(["plug", "tap://tap0", vnl])
    : host.spawn(["vde_plug", "tap://tap0", vnl]);
}

async function pingOverCloud(first: Peer, second: Peer, vnl: string, overlay6: boolean) {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  startPlug(a, first, vnl);
  startPlug(b, second, vnl);
  await a.waitForLink("tap0");
  await b.waitForLink("tap0");
  const [addressA, addressB] = overlay6 ? ["fd77::1", "fd77::2"] : ["10.0.0.1", "10.0.0.2"];
  await a.configure("tap0", `${addressA}/${overlay6 ? 64 : 24}`);
  await b.configure("tap0", `${addressB}/${overlay6 ? 64 : 24}`);
  assert.ok(await a.pingable(addressB), `${first} on ${a.netns} cannot ping ${second}`);
  assert.ok(await b.pingable(addressA), `${second} on ${b.netns} cannot ping ${first}`);
}

for (
  const [first, second] of [["vdeno", "vdeno"], ["vdeno", "vde_plug"], [
    "vde_plug",
    "vdeno",
  ]] as const
) {
  hostTest(
    `${first} and ${second} ping each other over an IPv4 group`,
    ["vde_plug", "ping"],
    async () => {
      await pingOverCloud(first, second, "vxvde://239.1.2.3", false);
    },
  );
}

hostTest("vdeno and vde_plug ping each other over an IPv6 group, carrying IPv6", [
  "vde_plug",
  "ping",
], async () => {
  await pingOverCloud("vdeno", "vde_plug", "vxvde://ff05:56de::7", true);
});
