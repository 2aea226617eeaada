/**
 * vxvde behaviour on the wire, checked against vdeplug4's vde_plug: learning
 * and unicast, VNI and port isolation, goodbye, stream mode through dpipe,
 * the if= option, and hostile datagrams.
 */

import assert from "node:assert/strict";
import { addressOf, captureUdp, PING_DATAGRAM } from "./_capture.ts";
import { type Host, hostTest, Lan, type Process, VDENO } from "./_harness.ts";

type Peer = "vdeno" | "vde_plug";

function plug(host: Host, peer: Peer, vnl: string, extra: string[] = []): Process {
  return peer === "vdeno"
    ? host.vdeno(["plug", ...extra, "tap://tap0", vnl])
    : host.spawn(["vde_plug", "tap://tap0", vnl]);
}

async function overlay(hosts: Host[]): Promise<string[]> {
  const addresses: string[] = [];
  for (const [i, host] of hosts.entries()) {
    await host.waitForLink("tap0");
    await host.configure("tap0", `10.0.0.${i + 1}/24`, `02:00:00:00:00:0${i + 1}`);
    addresses.push(`10.0.0.${i + 1}`);
  }
  return addresses;
}

for (
  const [sender, receiver] of [["vdeno", "vde_plug"], ["vde_plug", "vdeno"], [
    "vdeno",
    "vdeno",
  ]] as const
) {
  hostTest(`after learning, ${sender} sends frames to ${receiver} by unicast, not to the group`, [
    "vde_plug",
    "tcpdump",
  ], async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    plug(a, sender, "vxvde://239.2.0.1");
    plug(b, receiver, "vxvde://239.2.0.1");
    const [, addressB] = await overlay([a, b]);
    assert.ok(await a.pingable(addressB));
    const seen = await captureUdp(
      a,
      "eth0",
      () => a.sh(["ping", "-c", "5", "-i", "0.2", addressB]),
    );
    const pings = seen.filter((d) => d.length === PING_DATAGRAM);
    const toB = pings.filter((d) => addressOf(d.destination) === b.address);
    const fromB = pings.filter((d) => addressOf(d.source) === b.address);
    const toGroup = pings.filter((d) => addressOf(d.destination) === "239.2.0.1");
    assert.equal(
      toB.length,
      5,
      `echo requests by unicast to ${b.address}: ${JSON.stringify(seen)}`,
    );
    assert.equal(fromB.length, 5, `echo replies by unicast from ${b.address}`);
    assert.equal(toGroup.length, 0, "no echo went to the group");
  });
}

for (const option of ["vni", "port"] as const) {
  hostTest(`a different ${option} on the same group isolates, vdeno and vde_plug alike`, [
    "vde_plug",
  ], async () => {
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    const value = option === "vni" ? ["7", "8"] : ["15000", "15001"];
    plug(a, "vdeno", `vxvde://239.2.0.2/${option}=${value[0]}`);
    plug(b, "vde_plug", `vxvde://239.2.0.2/${option}=${value[0]}`);
    plug(c, "vde_plug", `vxvde://239.2.0.2/${option}=${value[1]}`);
    const [addressA, addressB, addressC] = await overlay([a, b, c]);
    assert.ok(await a.pingable(addressB), "same settings: vdeno reaches vde_plug");
    assert.ok(
      !(await a.pingable(addressC, 3000)),
      `other ${option}: vdeno must not reach vde_plug`,
    );
    assert.ok(
      !(await c.pingable(addressA, 3000)),
      `other ${option}: vde_plug must not reach vdeno`,
    );
    assert.ok(
      !(await c.pingable(addressB, 3000)),
      `other ${option}: vde_plug must not reach vde_plug`,
    );
  });
}

for (const [leaver, stayer] of [["vdeno", "vde_plug"], ["vde_plug", "vdeno"]] as const) {
  hostTest(`when ${leaver} says goodbye, ${stayer} sends frames for its MAC to the group again`, [
    "vde_plug",
    "tcpdump",
  ], async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    plug(a, stayer, "vxvde://239.2.0.3");
    const leaving = plug(b, leaver, "vxvde://239.2.0.3");
    const [, addressB] = await overlay([a, b]);
    assert.ok(await a.pingable(addressB));
    const goodbye = await captureUdp(a, "eth0", async () => {
      const status = await leaving.stop("SIGTERM");
      if (leaver === "vdeno") assert.equal(status.code, 0);
    });
    assert.ok(
      goodbye.some((d) =>
        d.length === 8 && addressOf(d.source) === b.address &&
        addressOf(d.destination) === "239.2.0.3"
      ),
      `an 8-byte goodbye went to the group: ${JSON.stringify(goodbye)}`,
    );
    // The ARP entry still names B's MAC, so the stayer must fall back to the group for it.
    const after = await captureUdp(
      a,
      "eth0",
      () => a.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", addressB]),
    );
    const pings = after.filter((d) =>
      d.length === PING_DATAGRAM && addressOf(d.source) === a.address
    );
    assert.ok(pings.length >= 3, `echo requests were sent: ${JSON.stringify(after)}`);
    assert.ok(
      pings.every((d) => addressOf(d.destination) === "239.2.0.3"),
      "all of them to the group",
    );
  });
}

hostTest(
  "dpipe vde_plug tap = vdeno plug vxvde carries the stream format",
  ["vde_plug", "dpipe"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    a.spawn(["dpipe", "vde_plug", "tap://tap0", "=", ...VDENO, "plug", "vxvde://239.2.0.4"]);
    plug(b, "vde_plug", "vxvde://239.2.0.4");
    const [addressA, addressB] = await overlay([a, b]);
    assert.ok(await a.pingable(addressB), "through the stream to vde_plug");
    assert.ok(await b.pingable(addressA), "and back");
    const big = await a.run(["ping", "-c", "3", "-s", "1400", addressB]);
    assert.equal(big.code, 0, "full-size frames cross the stream");
  },
);

hostTest("vdeno plug VNL = COMMAND carries the stream on the command's stdin and stdout", [
  "vde_plug",
], async () => {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  a.vdeno(["plug", "vxvde://239.2.0.5", "=", "vde_plug", "tap://tap0"]);
  plug(b, "vdeno", "vxvde://239.2.0.5");
  const [addressA, addressB] = await overlay([a, b]);
  assert.ok(await a.pingable(addressB));
  assert.ok(await b.pingable(addressA));
});

hostTest("if= sends and joins on the named interface only", ["vde_plug", "tcpdump"], async () => {
  await using lan = await Lan.create(2, { links: 2 });
  const [a, b] = lan.hosts;
  plug(a, "vdeno", "vxvde://239.2.0.6/if=eth1");
  plug(b, "vde_plug", "vxvde://239.2.0.6/if=eth1");
  const [, addressB] = await overlay([a, b]);
  let onEth0: unknown[] = [];
  const onEth1 = await captureUdp(a, "eth1", async () => {
    onEth0 = await captureUdp(a, "eth0", async () => {
      assert.ok(await a.pingable(addressB), "the plugs reach each other over eth1");
    });
  });
  assert.ok(onEth1.length > 0, "vxvde traffic on eth1");
  assert.deepEqual(onEth0, [], "none on eth0");
});

hostTest("a plug drops its own multicast echo but hears another plug on the same host", [
  "vde_plug",
], async () => {
  await using lan = await Lan.create(1);
  const [a] = lan.hosts;
  a.vdeno(["plug", "--name", "echo-test", "tap://tapx", "vxvde://239.2.0.7"]);
  a.spawn(["vde_plug", "tap://tapy", "vxvde://239.2.0.7"]);
  await a.waitForLink("tapx");
  await a.waitForLink("tapy");
  // Bringing the TAPs up makes the kernel send IPv6 multicast (MLD, router solicitations).
  await a.configure("tapx", "10.0.1.1/24", "02:00:00:00:01:01");
  await a.configure("tapy", "10.0.1.2/24", "02:00:00:00:01:02");
  await a.run(["ping", "-c", "2", "-W", "1", "-I", "tapx", "10.0.1.2"]);
  const report = JSON.parse(await a.sh([...VDENO, "status", "--json", "echo-test"]));
  const vxvde = report.plugs[1];
  assert.ok(vxvde.counters.dropOwnEcho > 0, "own multicast echo dropped and counted");
  const neighbour = vxvde.learned.find((entry: { mac: string }) =>
    entry.mac === "02:00:00:00:01:02"
  );
  assert.ok(neighbour, `the local vde_plug's MAC was learned: ${JSON.stringify(vxvde.learned)}`);
  assert.ok(neighbour.peer.startsWith(a.address + ":"), "from this host's address");
  assert.ok(
    !vxvde.learned.some((entry: { mac: string }) => entry.mac === "02:00:00:00:01:01"),
    "its own MAC was never learned from its echo",
  );
});
