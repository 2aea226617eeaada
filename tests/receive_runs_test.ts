/**
 * UDP GRO on the vxvde unicast socket: a peer's run of datagrams, sent as one
 * UDP GSO message, is taken in one buffer and handed to the TAP as the same
 * frames, in order.
 */

import assert from "node:assert/strict";
import { type Host, hostTest, Lan, type Process, requirements, sleep, VDENO } from "./_harness.ts";
import { MERGES_UDP } from "../plugs/_offload.ts";

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

const TCP_RUN_SENDER = new URL("./fixtures/tcp_run_sender.ts", import.meta.url).pathname;

/** The frames of a pcap file (classic format, as tcpdump -w writes). */
function pcapFrames(file: Uint8Array): Uint8Array[] {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const frames: Uint8Array[] = [];
  for (let at = 24; at + 16 <= file.length;) {
    const captured = view.getUint32(at + 8, true);
    frames.push(file.subarray(at + 16, at + 16 + captured));
    at += 16 + captured;
  }
  return frames;
}

/**
 * Sends a run of `count` TCP segments (segment `corrupt` with a bad checksum)
 * to a plug, and returns the frames its TAP handed the kernel, the plugs'
 * counters and how many TCP checksum errors the kernel counted.
 */
async function tcpRunToTheTap(count: number, corrupt: number) {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  const name = `tcpruns-${Deno.pid}-${corrupt}`;
  const plug = a.vdeno(["plug", "--name", name, "tap://tap0", "vxvde://239.4.0.12"]);
  await a.waitForLink("tap0", 30_000, plug);
  await a.configure("tap0", "10.99.0.1/24", "02:00:00:00:00:a1");
  const status = async () => JSON.parse(await a.sh([...VDENO, "status", "--json", name]));
  const counters = (report: { plugs: { vnl: string; counters: Record<string, number> }[] }) =>
    Object.fromEntries(report.plugs.map((entry) => [entry.vnl.slice(0, 3), entry.counters]));
  const port =
    (await status()).plugs.find((entry: { vnl: string }) => entry.vnl.startsWith("vxvde"))
      .unicastPort;
  const directory = await Deno.makeTempDir({ prefix: "vdeno-tcpruns-" });
  try {
    const file = `${directory}/tap0.pcap`;
    const onTap = a.spawn([
      "tcpdump",
      "-i",
      "tap0",
      "-Z",
      "root",
      "-U",
      "--immediate-mode",
      "-s",
      "0",
      "-w",
      file,
      "-Q",
      "in",
      "tcp and src host 10.99.0.2",
    ]);
    await onTap.waitForOutput((text) => text.includes("listening on"));
    const errorsBefore = await checksumErrors(a);
    const sent = JSON.parse(
      await b.sh([
        Deno.execPath(),
        "run",
        "-A",
        TCP_RUN_SENDER,
        a.address,
        String(port),
        "1",
        `${count}`,
        `${corrupt}`,
      ]),
    );
    assert.equal(sent.failed, 0, "the kernel took the GSO message");
    const deadline = Date.now() + 10_000;
    while (counters(await status()).tap.framesOut < count && Date.now() < deadline) {
      await sleep(100);
    }
    await sleep(300);
    await onTap.stop("SIGINT");
    const after = counters(await status());
    const errors = (await checksumErrors(a)) - errorsBefore;
    await plug.stop();
    return { frames: pcapFrames(await Deno.readFile(file)), counters: after, errors };
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
}

/** The TCP checksum errors a host's kernel counted so far. */
async function checksumErrors(host: { sh(argv: string[]): Promise<string> }): Promise<number> {
  const line = (await host.sh(["nstat", "-az", "TcpInCsumErrors"])).split("\n")
    .find((text) => text.startsWith("TcpInCsumErrors")) ?? "";
  return Number(line.split(/\s+/)[1] ?? "NaN");
}

/** Checks that `frame` is segments [from, to) of the sender's stream merged into one frame. */
function assertMerged(frame: Uint8Array, from: number, to: number): void {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const payload = (to - from) * 1000;
  assert.equal(frame.length, 54 + payload, `segments ${from} to ${to - 1} in one frame`);
  assert.equal(view.getUint16(16), 40 + payload, "the IPv4 total length of the merged frame");
  assert.equal(view.getUint32(38), 1000 + from * 1000, "the first segment's sequence number");
  assert.equal(frame[47], 0x10, "ACK");
  for (let i = 0; i < payload; i++) {
    if (frame[54 + i] !== (((from * 1000 + i) * 7) & 0xff)) {
      assert.fail(`payload byte ${i} of segments ${from} to ${to - 1} differs`);
    }
  }
}

hostTest(
  "a run of TCP segments reaches the TAP as one super-frame of exactly their bytes",
  ["tcpdump", "nstat"],
  async () => {
    const { frames, counters, errors } = await tcpRunToTheTap(20, -1);
    assert.equal(frames.length, 1, "one frame on the TAP");
    assertMerged(frames[0], 0, 20);
    assert.equal(counters.vxv.framesIn, 20);
    assert.equal(counters.vxv.bytesIn, 20 * 1054);
    assert.equal(counters.tap.framesOut, 20);
    assert.equal(counters.tap.superFramesOut, 1);
    assert.equal(errors, 0);
  },
);

hostTest(
  "a corrupt segment in a run is not merged: it reaches the TAP alone and the kernel drops and counts it",
  ["tcpdump", "nstat"],
  async () => {
    const { frames, counters, errors } = await tcpRunToTheTap(20, 7);
    assert.equal(frames.length, 3, "the segments before it, it, and those after it");
    assertMerged(frames[0], 0, 7);
    assert.equal(frames[1].length, 54 + 1000, "the corrupt segment as it came");
    assertMerged(frames[2], 8, 20);
    assert.equal(counters.vxv.framesIn, 20);
    assert.equal(counters.tap.framesOut, 20);
    assert.equal(counters.tap.superFramesOut, 2);
    assert.equal(errors, 1, "the receiving kernel's TcpInCsumErrors");
  },
);

const UDP_FLOW = new URL("./fixtures/udp_flow.ts", import.meta.url).pathname;
const UDP_MERGES = requirements(["nstat"], [
  { ok: MERGES_UDP, why: "Linux 6.2 or later (GSO_UDP_L4 on a TAP)" },
]);

/** The UDP checksum errors a host's kernel counted so far, IPv4's and IPv6's. */
async function udpCounters(host: Host): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const line of (await host.sh(["nstat", "-az"])).split("\n")) {
    const [name, value] = line.split(/\s+/);
    if (name === "UdpInCsumErrors" || name === "Udp6InCsumErrors") counts[name] = Number(value);
  }
  return counts;
}

/** The counters of each plug of `name` in `host`, by their VNL's first three letters (tap, vxv). */
async function plugCounters(
  host: Host,
  name: string,
): Promise<Record<string, Record<string, number>>> {
  const report = JSON.parse(await host.sh([...VDENO, "status", "--json", name]));
  return Object.fromEntries(
    report.plugs.map((entry: { vnl: string; counters: Record<string, number> }) => [
      entry.vnl.slice(0, 3),
      entry.counters,
    ]),
  );
}

/** Starts udp_flow.ts's receiver in `host`, on `address`, for `count` datagrams. */
async function flowReceiver(host: Host, address: string, count: number): Promise<Process> {
  const receiver = host.spawn([
    Deno.execPath(),
    "run",
    "-A",
    "--unstable-net",
    UDP_FLOW,
    "receive",
    address,
    `${count}`,
  ]);
  await receiver.waitForOutput((text) => text.includes("listening"), 30_000);
  return receiver;
}

/** What the receiver says it got, once it has ended. */
async function flowReceived(
  receiver: Process,
): Promise<{ right: [number, number][]; wrong: number }> {
  assert.equal((await receiver.exited()).code, 0, receiver.stderr);
  return JSON.parse(receiver.stdout.trim().split("\n").at(-1)!);
}

/**
 * Sends `runs` runs of `count` datagrams of one UDP flow (IPv4 or IPv6) to a plug, each run
 * as one UDP GSO message (`run`) or each datagram apart, datagram `corrupt` with a bad UDP
 * checksum; returns what a socket behind the TAP received, the plugs' counters and the kernel's
 * UDP counters' change.
 */
async function udpFlowToTheTap(
  family: 4 | 6,
  count: number,
  runs: number,
  mode: "run" | "apart",
  corrupt = -1,
) {
  await using lan = await Lan.create(2);
  const [a, b] = lan.hosts;
  const name = `udpruns-${Deno.pid}-${family}-${mode}`;
  const plug = a.vdeno(["plug", "--name", name, "tap://tap0", "vxvde://239.4.0.13"]);
  await a.waitForLink("tap0", 30_000, plug);
  await a.configure("tap0", "10.99.0.1/24", "02:00:00:00:00:a1");
  await a.sh(["ip", "addr", "add", "fd99::1/64", "dev", "tap0", "nodad"]);
  await a.sh(["ip", "neigh", "replace", "10.99.0.2", "lladdr", "02:00:00:00:00:b1", "dev", "tap0"]);
  await a.sh(["ip", "neigh", "replace", "fd99::2", "lladdr", "02:00:00:00:00:b1", "dev", "tap0"]);
  const port = JSON.parse(await a.sh([...VDENO, "status", "--json", name])).plugs
    .find((entry: { vnl: string }) => entry.vnl.startsWith("vxvde")).unicastPort;
  const total = count * runs;
  const address = family === 4 ? "10.99.0.1" : "fd99::1";
  const receiver = await flowReceiver(a, address, corrupt < 0 ? total : total - 1);
  const kernelBefore = await udpCounters(a);
  const sent = JSON.parse(
    await b.sh([
      Deno.execPath(),
      "run",
      "-A",
      UDP_FLOW,
      "send",
      a.address,
      String(port),
      "1",
      `${family}`,
      `${count}`,
      `${runs}`,
      mode,
      `${corrupt}`,
    ]),
  );
  assert.equal(sent.failed, 0, "the kernel took the datagrams");
  const received = await flowReceived(receiver);
  const after = await plugCounters(a, name);
  const kernelAfter = await udpCounters(a);
  await plug.stop();
  const kernel = Object.fromEntries(
    Object.entries(kernelAfter).map(([key, value]) => [key, value - (kernelBefore[key] ?? 0)]),
  );
  return { received, after, kernel };
}

/** Asserts that datagrams 0 to total - 1 but `missing` arrived right, in order, at their lengths. */
function assertFlow(
  right: [number, number][],
  count: number,
  total: number,
  missing = -1,
): void {
  const expected: [number, number][] = [];
  for (let j = 0; j < total; j++) {
    if (j !== missing) expected.push([j, j % count === count - 1 ? 500 : 1000]);
  }
  assert.deepEqual(right, expected);
}

for (const family of [4, 6] as const) {
  hostTest(
    `IPv${family}: a run of one UDP flow's datagrams is written to the TAP as one super-datagram, and every one arrives`,
    UDP_MERGES,
    async () => {
      const { received, after, kernel } = await udpFlowToTheTap(family, 20, 3, "run");
      assertFlow(received.right, 20, 60);
      assert.equal(received.wrong, 0);
      assert.equal(after.vxv.framesIn, 60);
      assert.equal(after.tap.framesOut, 60);
      assert.equal(after.tap.superFramesOut, 3, "each run in one TAP write (GSO_UDP_L4)");
      // (UdpInDatagrams counts the plug's own vxvde datagrams too: the receiver counted above.)
      assert.equal(kernel[family === 4 ? "UdpInCsumErrors" : "Udp6InCsumErrors"], 0);
    },
  );
}

hostTest(
  "datagrams of one UDP flow received apart are merged in the batch, and a corrupt one is not",
  UDP_MERGES,
  async () => {
    const { received, after, kernel } = await udpFlowToTheTap(4, 40, 1, "apart", 25);
    assertFlow(received.right, 40, 40, 25);
    assert.equal(received.wrong, 0);
    assert.equal(after.tap.framesOut, 40);
    assert.ok(after.tap.superFramesOut >= 1, "datagrams read in one batch were merged");
    assert.equal(kernel.UdpInCsumErrors, 1, "the corrupt datagram reached the kernel as it came");
  },
);

for (const family of [4, 6] as const) {
  hostTest(
    `IPv${family}: a UDP GSO message crosses two plugs whole, TAP to TAP, and every datagram arrives`,
    UDP_MERGES,
    async () => {
      await using lan = await Lan.create(2);
      const hosts = lan.hosts;
      const names = hosts.map((_, i) => `usoread-${Deno.pid}-${family}-${i}`);
      const plugs = hosts.map((host, i) =>
        host.vdeno(["plug", "--name", names[i], "tap://tap0", "vxvde://239.4.0.14"])
      );
      for (const [i, host] of hosts.entries()) {
        await host.waitForLink("tap0", 30_000, plugs[i]);
        await host.configure("tap0", `10.99.0.${i + 1}/24`);
        await host.sh(["ip", "addr", "add", `fd99::${i + 1}/64`, "dev", "tap0", "nodad"]);
      }
      const [a, b] = hosts;
      const to = family === 4 ? "10.99.0.1" : "fd99::1";
      assert.ok(await b.pingable(to), "host 2 cannot ping host 1");
      const before = await plugCounters(b, names[1]);
      const errorsBefore = await udpCounters(a);
      const receiver = await flowReceiver(a, to, 60);
      const sent = JSON.parse(await b.sh([Deno.execPath(), "run", "-A", UDP_FLOW, "gso", to, "3"]));
      assert.equal(sent.sent, 60);
      const received = await flowReceived(receiver);
      const after = await plugCounters(b, names[1]);
      const errors = await udpCounters(a);
      for (const plug of plugs) await plug.stop();
      assertFlow(received.right, 20, 60);
      assert.equal(received.wrong, 0);
      assert.equal(
        after.tap.superFramesIn - before.tap.superFramesIn,
        3,
        "the sending TAP handed over each message whole (USO)",
      );
      // (An IPv6 neighbour or multicast listener message may come too.)
      assert.ok(after.tap.framesIn - before.tap.framesIn >= 60, "cut into its datagrams");
      const name = family === 4 ? "UdpInCsumErrors" : "Udp6InCsumErrors";
      assert.equal(errors[name] - errorsBefore[name], 0);
    },
  );
}
