/**
 * The warm-up at open: a plug runs its data path on synthetic frames before
 * the first real one, and none of them reaches the TAP or the network, nor
 * shows in the counters or the MAC table.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, VDENO } from "./_harness.ts";

hostTest(
  "warm-up moves synthetic frames through both plugs and the cable, none on the TAP or the wire, counters and MAC table untouched",
  ["tcpdump"],
  async () => {
    await using lan = await Lan.create(2);
    const [a] = lan.hosts;
    // A TAP that exists before the plug, up, with nothing of the kernel's own to send on it.
    for (const setting of ["all", "default"]) {
      await a.sh(["sysctl", "-q", "-w", `net.ipv6.conf.${setting}.disable_ipv6=1`]);
    }
    await a.sh(["ip", "tuntap", "add", "mode", "tap", "name", "tap0"]);
    await a.sh(["ip", "link", "set", "tap0", "up"]);
    const onTap = a.spawn(["tcpdump", "-i", "tap0", "-nn", "-l", "-e"]);
    const onWire = a.spawn(["tcpdump", "-i", "eth0", "-nn", "-l", "udp"]);
    await onTap.waitForOutput((text) => text.includes("listening on"));
    await onWire.waitForOutput((text) => text.includes("listening on"));

    const name = `warm-${Deno.pid}`;
    const plug = a.vdeno([
      "plug",
      "--name",
      name,
      "--log-level",
      "debug",
      "tap://tap0",
      "vxvde://239.4.0.9",
    ]);
    const moved = /(\S+): warm-up moved (\d+) frames in and (\d+) out/g;
    const cable =
      /cable warm-up: (\d+) wake-ups, (\d+) with a backlog taking turns, (\d+) frames in from tap:\/\/tap0 and (\d+) from vxvde/;
    await plug.waitForOutput((text) => cable.test(text), 30_000);
    const status = JSON.parse(await a.sh([...VDENO, "status", "--json", name]));
    await onTap.stop("SIGINT");
    await onWire.stop("SIGINT");

    const warmed = new Map(
      [...plug.stderr.matchAll(moved)].map((m) => [m[1], [Number(m[2]), Number(m[3])]]),
    );
    assert.match(onTap.stderr, /\b0 packets captured/, `on tap0: ${onTap.stdout}`);
    assert.match(onWire.stderr, /\b0 packets captured/, `on eth0: ${onWire.stdout}`);
    for (const entry of status.plugs) {
      const moving = Object.entries(entry.counters).filter(([, value]) => value !== 0);
      assert.deepEqual(moving, [], `${entry.vnl} counters after the warm-up`);
    }
    const vxvde = status.plugs.find((entry: { vnl: string }) => entry.vnl.startsWith("vxvde"));
    assert.deepEqual(vxvde.learned, []);
    // The TAP warms with an ARP, a router solicitation, pings and TCP super-frames cut into
    // segments, the vxvde plug with datagrams from a loopback peer: a hundred or more each way.
    for (const vnl of ["tap://tap0", "vxvde://239.4.0.9"]) {
      const [framesIn, framesOut] = warmed.get(vnl) ?? [0, 0];
      assert.ok(framesIn >= 100 && framesOut >= 100, `${vnl} warmed: ${plug.stderr}`);
    }
    // Then the cable itself ran on both plugs' warm-up descriptors: frames crossed it both ways,
    // and the TAP's bursts, looped back by the vxvde plug, left backlogs that took turns.
    const [, wakeUps, backlogTurns, fromTap, fromVxvde] = cable.exec(plug.stderr)!.map(Number);
    assert.ok(wakeUps >= 200, `cable warm-up wake-ups: ${plug.stderr}`);
    assert.ok(backlogTurns > 0, `cable warm-up backlog turns: ${plug.stderr}`);
    assert.ok(fromTap >= 200 && fromVxvde >= 200, `cable warm-up frames: ${plug.stderr}`);
    await plug.stop();
  },
);
