/**
 * UDP GRO on the vxvde unicast socket: a peer's run of datagrams, sent as one
 * UDP GSO message, is taken in one buffer and handed to the TAP as the same
 * frames, in order.
 */

import assert from "node:assert/strict";
import { hostTest, Lan, sleep, VDENO } from "./_harness.ts";

const RUN_SENDER = new URL("./fixtures/run_sender.ts", import.meta.url).pathname;

/** Sends `runs` runs of `count` datagrams to a plug and checks every frame on its TAP. */
async function runsReachTheTap(count: number, runs: number): Promise<void> {
  const COUNT = count * runs;
  {
    await using lan = await Lan.create(2);
    const [a, b] = lan.hosts;
    const name = `runs-${Deno.pid}`;
    const plug = a.vdeno(["plug", "--name", name, "tap://tap0", "vxvde://239.4.0.11"]);
    await a.waitForLink("tap0");
    await a.sh(["ip", "link", "set", "tap0", "up"]);
    const status = async () => JSON.parse(await a.sh([...VDENO, "status", "--json", name]));
    const vxvde = (report: { plugs: { vnl: string }[] }) =>
      report.plugs.find((entry) => entry.vnl.startsWith("vxvde")) as unknown as {
        unicastPort: number;
        counters: Record<string, number>;
      };
    const port = vxvde(await status()).unicastPort;
    const onTap = a.spawn(["tcpdump", "-i", "tap0", "-nn", "-l", "-e", "-x", "ether proto 0x88b5"]);
    await onTap.waitForOutput((text) => text.includes("listening on"));

    const sent = JSON.parse(
      await b.sh([
        Deno.execPath(),
        "run",
        "-A",
        RUN_SENDER,
        a.address,
        String(port),
        "1",
        `${count}`,
        `${runs}`,
      ]),
    );
    assert.equal(sent.failed, 0, "the kernel took the GSO message");
    const deadline = Date.now() + 10_000;
    while ((onTap.stdout.match(/ethertype/g) ?? []).length < COUNT && Date.now() < deadline) {
      await sleep(100);
    }
    await sleep(300);
    await onTap.stop("SIGINT");
    const after = vxvde(await status());
    await plug.stop();

    // tcpdump -x prints each frame's bytes after the Ethernet header, 16 to a line.
    const frames = onTap.stdout.split(/\n(?=\S)/).filter((block) => block.includes("ethertype"));
    assert.equal(frames.length, COUNT, onTap.stdout.slice(0, 2000));
    for (const [j, block] of frames.entries()) {
      assert.match(block, /02:00:00:00:00:b1 > 02:00:00:00:00:a1, ethertype Unknown \(0x88b5\)/);
      const payload = [...block.matchAll(/0x[0-9a-f]{4}:\s+((?:[0-9a-f]{4}\s?)+)/g)]
        .map((line) => line[1].replace(/\s/g, "")).join("");
      const expected = j % count === count - 1 ? 500 : 1000;
      assert.equal(payload.length / 2, expected, `frame ${j}: ${expected} bytes of payload`);
      const byte = (j & 0xff).toString(16).padStart(2, "0");
      assert.equal(payload, byte.repeat(expected), `frame ${j} content`);
    }
    assert.equal(after.counters.framesIn, COUNT);
    assert.equal(after.counters.dropMalformed + after.counters.dropTooLong, 0);
    assert.ok(after.counters.superFramesIn >= runs, "each run came in one buffer (UDP_GRO)");
  }
}

hostTest(
  "a run of datagrams received as one buffer reaches the TAP as the same frames, in order",
  ["tcpdump"],
  () => runsReachTheTap(20, 1),
);

hostTest(
  "three runs of 40 datagrams, more than one batch holds, reach the TAP whole and in order",
  ["tcpdump"],
  () => runsReachTheTap(40, 3), // a batch is 64 frames: the second run starts the next one
);
