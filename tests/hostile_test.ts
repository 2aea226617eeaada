/**
 * Hostile datagrams on the group and on a plug's unicast port are dropped,
 * counted under the right reason, and never stop real traffic.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, VDENO } from "./_harness.ts";

const SENDER = new URL("./fixtures/junk_sender.ts", import.meta.url).pathname;

interface Counters {
  [name: string]: number;
}

hostTest(
  "junk datagrams are dropped and counted by reason while pings go on",
  ["ping"],
  async () => {
    await using lan = await Lan.create(3);
    const [a, b, attacker] = lan.hosts;
    const victim = a.vdeno(["plug", "--name", "victim", "tap://tap0", "vxvde://239.3.0.1/vni=42"]);
    b.vdeno(["plug", "tap://tap0", "vxvde://239.3.0.1/vni=42"]);
    for (const [i, host] of [a, b].entries()) {
      await host.waitForLink("tap0");
      await host.configure("tap0", `10.0.0.${i + 1}/24`);
    }
    assert.ok(await a.pingable("10.0.0.2"));
    const status = async () => JSON.parse(await a.sh([...VDENO, "status", "--json", "victim"]));
    const unicastPort = (await status()).plugs[1].unicastPort;
    const flood = async (port: number, kinds: string[], count: number) =>
      JSON.parse(
        await attacker.sh(
          [
            Deno.execPath(),
            "run",
            "-A",
            "--quiet",
            SENDER,
            port === 14789 ? "239.3.0.1" : a.address,
            String(port),
            "42",
            String(count),
            ...kinds,
          ],
          120_000,
        ),
      );
    const before: Counters = (await status()).plugs[1].counters;
    const pinging = a.run(["ping", "-c", "20", "-i", "0.1", "10.0.0.2"], { timeoutMs: 30_000 });
    const toGroup = await flood(14789, ["short", "flags", "vni", "reserved", "tiny", "huge"], 500);
    const toUnicast = await flood(
      unicastPort,
      ["short", "flags", "vni", "reserved", "tiny", "huge"],
      500,
    );
    const ping = await pinging;
    const after: Counters = (await status()).plugs[1].counters;
    const grew = (name: string) => after[name] - before[name];
    const sent = (kind: string) => toGroup[kind] + toUnicast[kind];

    assert.equal(ping.code, 0, `pings kept flowing during the flood: ${ping.stdout}`);
    assert.equal(
      (await a.run(["kill", "-0", String(victim.child.pid)])).code,
      0,
      "the plug is alive",
    );
    assert.equal(grew("dropMalformed"), sent("short"), "datagrams shorter than a header");
    assert.equal(
      grew("dropWrongHeader"),
      sent("flags") + sent("vni") + sent("reserved"),
      "wrong header bytes",
    );
    assert.equal(grew("dropTooShort"), sent("tiny"), "frames of 14 bytes or less");
    assert.equal(grew("dropTooLong"), sent("huge"), "frames over the largest size");
    assert.ok(after.learned - before.learned <= 2, "junk taught the table nothing");
  },
);

hostTest(
  "a frame from a group source MAC is delivered but its MAC is never learned",
  ["tcpdump"],
  async () => {
    await using lan = await Lan.create(2);
    const [a, attacker] = lan.hosts;
    a.vdeno(["plug", "--name", "grpsrc", "tap://tap0", "vxvde://239.3.0.2"]);
    await a.waitForLink("tap0");
    await a.sh(["ip", "link", "set", "tap0", "up"]);
    await attacker.sh([
      Deno.execPath(),
      "run",
      "-A",
      "--quiet",
      SENDER,
      "239.3.0.2",
      "14789",
      "1",
      "50",
      "groupsource",
    ]);
    const report = JSON.parse(await a.sh([...VDENO, "status", "--json", "grpsrc"]));
    const counters = report.plugs[1].counters;
    assert.equal(counters.framesIn, 50);
    assert.equal(report.plugs[1].learned.length, 0);
  },
);
