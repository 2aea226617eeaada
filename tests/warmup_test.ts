/**
 * The warm-up at open: a plug runs its data path on synthetic frames before
 * the first real one, and none of them reaches the TAP or the network, nor
 * shows in the counters or the MAC table; on a keyed network with a key of
 * its own, which proves nobody to the real one, and frames in pieces.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, VDENO } from "./_harness.ts";
import { HELLO_MARK } from "../plugs/_peers.ts";

/** The network the TAP is plugged into: vxvde, open, keyed or with peers=, or vxlan. */
type Network = "open" | "keyed" | "peers" | "vxlan";
const TITLES: Record<Network, string> = {
  open: "",
  keyed: ": a keyed network seals and opens them with a key of the warm-up's own",
  peers: ": with peers=, its copies of floods too, none to a member",
  vxlan: ": a vxlan network too",
};

/** UDP on the wire but a peers= hello (HELLO_MARK in byte 2 of the vxvde header). */
const NOT_A_HELLO = `udp and udp[10] != ${HELLO_MARK}`;

for (const network of ["open", "keyed", "peers", "vxlan"] as const) {
  hostTest(
    `warm-up moves synthetic frames through both plugs and the cable, none on the TAP or the wire, counters and MAC table untouched${
      TITLES[network]
    }`,
    ["tcpdump"],
    () => warmUpTouchesNothing(network),
  );
}

async function warmUpTouchesNothing(kind: Network): Promise<void> {
  const keyed = kind === "keyed";
  {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    // A TAP that exists before the plug, up, with nothing of the kernel's own to send on it.
    for (const setting of ["all", "default"]) {
      await a.sh(["sysctl", "-q", "-w", `net.ipv6.conf.${setting}.disable_ipv6=1`]);
    }
    await a.sh(["ip", "tuntap", "add", "mode", "tap", "name", "tap0"]);
    await a.sh(["ip", "link", "set", "tap0", "up"]);
    const onTap = a.spawn(["tcpdump", "-i", "tap0", "-nn", "-l", "-e"]);
    // A member of a peers= mesh says hello to the others: what else is on the wire counts.
    const onWire = a.spawn(["tcpdump", "-i", "eth0", "-nn", "-l", NOT_A_HELLO]);
    await onTap.waitForOutput((text) => text.includes("listening on"));
    await onWire.waitForOutput((text) => text.includes("listening on"));

    const name = `warm-${Deno.pid}`;
    let network = kind === "vxlan" ? "vxlan://239.4.0.9" : "vxvde://239.4.0.9";
    if (kind === "peers") network += `/peers=${b.address}`;
    if (keyed) {
      const key = `${await a.sh(["mktemp", "-d"])}`.trim() + "/warm.key";
      await a.sh([...VDENO, "keygen", key]);
      network += `/key='${key}'`;
    }
    const plug = a.vdeno([
      "plug",
      "--name",
      name,
      "--log-level",
      "debug",
      "tap://tap0",
      network,
    ]);
    const moved = /(\S+): warm-up moved (\d+) frames in and (\d+) out/g;
    const cable =
      /cable warm-up: (\d+) wake-ups, (\d+) with a backlog taking turns, (\d+) frames in from tap:\/\/tap0 and (\d+) from vx/;
    await plug.waitForOutput((text) => cable.test(text), 30_000);
    const status = JSON.parse(await a.sh([...VDENO, "status", "--json", name]));
    await onTap.stop("SIGINT");
    await onWire.stop("SIGINT");

    const warmed = new Map(
      [...plug.stderr.matchAll(moved)].map((m) => [m[1], [Number(m[2]), Number(m[3])]]),
    );
    assert.match(onTap.stderr, /\b0 packets captured/, `on tap0: ${onTap.stdout}`);
    if (keyed) {
      // A keyed plug greets the group once when it opens, before its warm-up: nothing else.
      const datagrams = onWire.stdout.split("\n").filter((line) => line.trim() !== "");
      assert.ok(datagrams.length <= 1, `on eth0: ${onWire.stdout}`);
      for (const line of datagrams) assert.match(line, /> 239\.4\.0\.9\.\d+: UDP/);
    } else assert.match(onWire.stderr, /\b0 packets captured/, `on eth0: ${onWire.stdout}`);
    for (const entry of status.plugs) {
      // ... whose echo from the group the plug drops as its own, once.
      const moving = Object.entries(entry.counters).filter(([name, value]) =>
        value !== 0 && !(keyed && name === "dropOwnEcho" && value === 1)
      );
      assert.deepEqual(moving, [], `${entry.vnl} counters after the warm-up`);
    }
    const member = status.plugs.find((entry: { vnl: string }) => entry.vnl.startsWith("vx"));
    assert.deepEqual(member.learned, []);
    // The warm-up's peer was proven to a sealer of the warm-up's own, not to the plug's.
    if (keyed) assert.equal(member.provenSenders, 0);
    // The TAP warms with an ARP, a router solicitation, pings and TCP super-frames cut into
    // segments, the network plug with datagrams from a loopback peer: a hundred or more each way.
    // On a keyed network the frames in were opened, and those out sealed, with the warm-up's key.
    for (const vnl of ["tap://tap0", network]) {
      const [framesIn, framesOut] = warmed.get(vnl) ?? [0, 0];
      assert.ok(framesIn >= 100 && framesOut >= 100, `${vnl} warmed: ${plug.stderr}`);
    }
    // A keyed plug cut its longest frames into pieces, as it will the network's.
    const cut = / warm-up moved \d+ frames in and \d+ out \((\d+) in pieces\)/.exec(plug.stderr);
    if (keyed) assert.ok(Number(cut?.[1]) >= 25, `frames cut in the warm-up: ${plug.stderr}`);
    else assert.equal(cut, null, `frames cut on an open network: ${plug.stderr}`);
    // Then the cable itself ran on both plugs' warm-up descriptors: frames crossed it both ways,
    // and, on an open vxvde network, the TAP's bursts came back as runs and left backlogs that
    // took turns (a keyed plug drops what it sealed itself as its own echo; a vxlan plug sends
    // them to its peer, which drains them).
    const [, wakeUps, backlogTurns, fromTap, fromNetwork] = cable.exec(plug.stderr)!.map(Number);
    assert.ok(wakeUps >= 200, `cable warm-up wake-ups: ${plug.stderr}`);
    if (kind === "open") assert.ok(backlogTurns > 0, `cable warm-up backlog turns: ${plug.stderr}`);
    assert.ok(fromTap >= 200 && fromNetwork >= 200, `cable warm-up frames: ${plug.stderr}`);
    await plug.stop();
  }
}
