/**
 * A cloud of a dozen hosts (the bench runs 32: `deno task bench --scale`),
 * a table that fills and collides, and a flood of random source MACs.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, sleep, VDENO } from "./_harness.ts";
import {
  addMacsBehindTaps,
  allPairsPing,
  type MemberKind,
  startCloud,
  total,
  until,
  vxvdeStates,
} from "../bench/_scale.ts";

const HOSTS = 12;
const JUNK_SENDER = new URL("./fixtures/junk_sender.ts", import.meta.url).pathname;

hostTest(
  "12 hosts, vdeno and vde_plug mixed, all answer each other; a full table still delivers, by the group",
  ["ping", "vde_plug"],
  async () => {
    await using lan = await Lan.create(HOSTS);
    // hashsize=64 with 20 MACs behind each of 12 TAPs: the table overflows and collides.
    const vnl = "vxvde://239.4.13.1/hashsize=64";
    const kinds: MemberKind[] = lan.hosts.map((_, i) => i % 4 === 3 ? "vde_plug" : "vdeno");
    const cloud = await startCloud(lan, kinds, vnl);
    try {
      const before = await vxvdeStates(cloud);
      const mesh = await allPairsPing(cloud, 60);
      assert.equal(mesh.missingPairs, 0, "every host answered every other");
      const after = await vxvdeStates(cloud);
      assert.equal(after.size, HOSTS - 3, "every vdeno plug reported");
      const delta = (name: string) => total(after, name) - total(before, name);
      assert.ok(delta("sentMulticast") > 0, "ARP requests went to the group");
      assert.ok(
        delta("sentUnicast") > delta("sentMulticast"),
        `once learned, most frames went by unicast: ${delta("sentUnicast")} unicast, ` +
          `${delta("sentMulticast")} to the group`,
      );

      await addMacsBehindTaps(cloud, 20);
      // 12 x 20 macvlan MACs + 12 hosts: far more than 64 slots.
      const filled = await until(async () => {
        const states = await vxvdeStates(cloud);
        return total(states, "tableEvictions") > 0 &&
          [...states.values()].every((state) => state.liveEntries >= 32);
      }, 30_000);
      const full = await vxvdeStates(cloud);
      assert.ok(filled, `the tables filled and collided: ${JSON.stringify([...full.values()])}`);
      for (const state of full.values()) {
        assert.equal(state.tableSize, 64);
        assert.ok(state.liveEntries <= 64, "a table never holds more than its slots");
      }
      const again = await allPairsPing(cloud, 60);
      assert.equal(again.missingPairs, 0, "every host still answered every other");
      const last = await vxvdeStates(cloud);
      assert.ok(
        total(last, "sentMulticast") - total(full, "sentMulticast") > 0,
        "frames for MACs that lost their slot went to the group",
      );
    } finally {
      await cloud.stop();
    }
  },
);

function residentMb(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

hostTest(
  "a flood of 100k random source MACs: the table stays bounded, members stay reachable, memory flat, debug lines rate-limited",
  ["ping"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, c] = lan.hosts;
    const vnl = "vxvde://239.4.13.2";
    const name = `flood-${Deno.pid}`;
    const plug = a.vdeno(["plug", "--name", name, "--log-level", "debug", "tap://tap0", vnl]);
    b.vdeno(["plug", "tap://tap0", vnl]);
    for (const [i, host] of [a, b].entries()) {
      await host.waitForLink("tap0");
      await host.configure("tap0", `10.0.0.${i + 1}/24`, `02:00:00:00:00:0${i + 1}`);
    }
    assert.ok(await a.pingable("10.0.0.2"));
    const status = async () =>
      JSON.parse(await a.sh([...VDENO, "status", "--json", name])).plugs[1];
    // Let the first frames and the status query settle the plug's memory before measuring.
    await status();
    await sleep(1000);
    const rssBefore = residentMb(plug.child.pid);
    const before = await status();

    const floodStarted = Date.now();
    const sent = JSON.parse(
      await c.sh([
        Deno.execPath(),
        "run",
        "-A",
        JUNK_SENDER,
        "239.4.13.2",
        "14789",
        "1",
        "100000",
        "learn",
      ]),
    );
    assert.equal(sent.learn, 100000);
    await sleep(1000);
    const floodSeconds = (Date.now() - floodStarted) / 1000;
    const after = await status();

    const learned = after.counters.learned - before.counters.learned;
    const evictions = after.counters.tableEvictions - before.counters.tableEvictions;
    assert.ok(learned > 50_000, `the flood shows in the counters: ${learned} learned`);
    assert.ok(evictions > 40_000, `and in the evictions: ${evictions}`);
    assert.equal(after.tableSize, 1024);
    assert.ok(after.learned.length <= 1024, "the table stays bounded");
    assert.ok(await a.pingable("10.0.0.2"), "the real member is still reachable");
    const rssAfter = residentMb(plug.child.pid);
    assert.ok(
      rssAfter < rssBefore + 40,
      `memory stays flat: ${rssBefore.toFixed(1)} MB before, ${rssAfter.toFixed(1)} MB after`,
    );

    const debugLines = plug.stderr.split("\n").filter((line) => line.includes(" vdeno debug: "));
    assert.ok(
      debugLines.length <= 21 * (Math.ceil(floodSeconds) + 4),
      `${debugLines.length} debug lines in ${floodSeconds} s`,
    );
    assert.ok(debugLines.some((line) => /\d+ more table changes not shown/.test(line)));
  },
);
